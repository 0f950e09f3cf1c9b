"""HTML reports of runs: ``jointnet report RUN [RUN...] -o report.html``.

- `runs`: run directories read and validated (`load_run`), grouped over seeds (`group_runs`);
- `svg`: charts and architecture drawings as SVG written here (no plotting library needed);
- `mpl`: the same charts drawn with matplotlib (the optional extra ``jointnet[plots]``);
- `page`: the self-contained page (`build_report`) and its atomic write (`write_report`).
"""

from jointnet.report.page import CHARTS, build_report, write_report
from jointnet.report.runs import RunData, RunGroup, group_runs, load_run

__all__ = ["CHARTS", "RunData", "RunGroup", "build_report", "group_runs", "load_run", "write_report"]
