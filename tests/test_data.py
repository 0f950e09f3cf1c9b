"""jointnet.experiments.data: the IDX reader, the data set lookup, Fashion-MNIST / MNIST / CIFAR-100 loaders.

The Fashion-MNIST tests need the Debian package dataset-fashion-mnist (CI installs it); they fail,
never skip, when it is missing. Everything else runs on small files the tests write.
"""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import pytest
import torch
from datafiles import fake_mnist, tiny_cifar, write_cifar100, write_idx

from jointnet.errors import DataError, JointNetError
from jointnet.experiments import data
from jointnet.experiments.data import read_idx

# --------------------------------------------------------------------------------------------
# IDX: files written by hand, byte by byte, independently of write_idx
# --------------------------------------------------------------------------------------------

# IDX dtype code -> (struct format char, torch dtype)
CODES = {
    0x08: ("B", torch.uint8),
    0x09: ("b", torch.int8),
    0x0B: ("h", torch.int16),
    0x0C: ("i", torch.int32),
    0x0D: ("f", torch.float32),
    0x0E: ("d", torch.float64),
}


def idx_bytes(code: int, dims: list[int], values: list) -> bytes:
    fmt = CODES[code][0]
    header = bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
    return header + struct.pack(f">{len(values)}{fmt}", *values)


def write(path: Path, payload: bytes) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("code", sorted(CODES))
def test_idx_reads_hand_written_files(tmp_path, code, suffix):
    dims = [2, 3, 2]
    base = [0, 1, -2, 3, 100, -7, 5, 6, 7, 8, -9, 10]
    values = [abs(v) for v in base] if code == 0x08 else [v / 4 for v in base] if code in (0x0D, 0x0E) else base
    p = write(tmp_path / f"a{suffix}", idx_bytes(code, dims, values))
    t = read_idx(p)
    assert t.dtype == CODES[code][1]
    assert list(t.shape) == dims
    assert t.flatten().tolist() == values


@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.float32, torch.float64])
def test_write_idx_round_trip(tmp_path, name, dtype):
    x = (torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(1)) * 50).to(dtype)
    p = write_idx(tmp_path / name, x)
    assert torch.equal(read_idx(p), x)
    assert read_idx(p).dtype == dtype
    # the writer's bytes are the hand format
    raw = gzip.decompress(p.read_bytes()) if name.endswith(".gz") else p.read_bytes()
    assert raw[:4] == bytes([0, 0, {v[1]: k for k, v in CODES.items()}[dtype], 3])
    assert struct.unpack(">3I", raw[4:16]) == (4, 5, 3)


def test_idx_gzip_is_recognised_by_content(tmp_path):
    p = tmp_path / "no-suffix"
    p.write_bytes(gzip.compress(idx_bytes(0x08, [3], [1, 2, 3])))
    assert read_idx(p).tolist() == [1, 2, 3]


def test_idx_empty_dimension(tmp_path):
    p = write(tmp_path / "e", idx_bytes(0x08, [0, 28], []))
    assert read_idx(p).shape == (0, 28)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_truncated_data(tmp_path, suffix):
    good = idx_bytes(0x08, [10, 4], list(range(40)))
    p = write(tmp_path / f"trunc{suffix}", good[:-5])
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(p)
    assert str(p) in str(e.value)
    assert "40 bytes" in str(e.value) and "35" in str(e.value)


def test_idx_truncated_header(tmp_path):
    p = write(tmp_path / "h", idx_bytes(0x08, [2, 2], [1, 2, 3, 4])[:6])
    with pytest.raises(DataError, match="truncated") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(idx_bytes(0x08, [1000], [i % 251 for i in range(1000)]))
    p = tmp_path / "cut.gz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_corrupt_gzip_crc(tmp_path):
    blob = bytearray(gzip.compress(idx_bytes(0x08, [4], [1, 2, 3, 4])))
    blob[-8] ^= 0xFF  # the CRC32 of the trailer
    p = tmp_path / "crc.gz"
    p.write_bytes(bytes(blob))
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_wrong_magic(tmp_path):
    p = write(tmp_path / "magic", b"\x01\x02" + idx_bytes(0x08, [2], [1, 2])[2:])
    with pytest.raises(DataError, match="magic") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_unknown_dtype_code(tmp_path):
    p = write(tmp_path / "code", bytes([0, 0, 0x0A, 1]) + struct.pack(">I", 2) + b"\x00\x00")
    with pytest.raises(DataError, match="dtype code 0x0A") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_zero_dims(tmp_path):
    p = write(tmp_path / "nd", bytes([0, 0, 0x08, 0]))
    with pytest.raises(DataError, match="0 dimensions"):
        read_idx(p)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_wrong_length_trailing_bytes(tmp_path, suffix):
    p = write(tmp_path / f"long{suffix}", idx_bytes(0x08, [2, 2], [1, 2, 3, 4]) + b"\x00")
    with pytest.raises(DataError, match="wrong length") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_named_gz_but_not_gzip(tmp_path):
    p = tmp_path / "fake.gz"
    p.write_bytes(idx_bytes(0x08, [1], [1]))
    with pytest.raises(DataError, match="not gzip") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="cannot open"):
        read_idx(tmp_path / "nope")


def test_data_error_is_a_jointnet_error():
    assert issubclass(DataError, JointNetError)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (the real files) and the lookup order (fake files)
# --------------------------------------------------------------------------------------------


def test_fashion_mnist_loads():
    fm = data.load_fashion_mnist()
    assert fm["train_images"].shape == (60000, 28, 28) and fm["train_images"].dtype == torch.uint8
    assert fm["test_images"].shape == (10000, 28, 28) and fm["test_images"].dtype == torch.uint8
    assert fm["train_labels"].shape == (60000,) and fm["test_labels"].shape == (10000,)
    assert torch.bincount(fm["train_labels"].long()).tolist() == [6000] * 10
    assert torch.bincount(fm["test_labels"].long()).tolist() == [1000] * 10
    assert fm["classes"][0] == "T-shirt/top" and len(fm["classes"]) == 10
    assert 0 < fm["train_images"].float().mean() < 255
    # cached: the second call hands back the same tensors
    again = data.load_fashion_mnist()
    assert again["train_images"] is fm["train_images"]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No $JOINTNET_DATA, no Debian data, an empty working directory."""
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST", tmp_path / "debian" / "fashion-mnist")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return tmp_path


def test_missing_fashion_mnist_lists_every_place(isolated, monkeypatch):
    explicit = isolated / "explicit"
    env = isolated / "env"
    env.mkdir()
    monkeypatch.setenv(data.ENV_VAR, str(env))
    with pytest.raises(DataError) as e:
        data.load_fashion_mnist(explicit)
    msg = str(e.value)
    places = [
        explicit,
        env,
        explicit / "FashionMNIST" / "raw",
        env / "FashionMNIST" / "raw",
        isolated / "cwd" / "data" / "FashionMNIST" / "raw",
        isolated / "debian" / "fashion-mnist",
    ]
    positions = [msg.index(f"{p} (") for p in places]
    assert positions == sorted(positions), msg  # listed in the order looked
    assert "apt-get install -y dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "JOINTNET_DATA" in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg


def test_missing_fashion_mnist_says_env_not_set(isolated):
    with pytest.raises(DataError, match=r"\$JOINTNET_DATA: not set"):
        data.load_fashion_mnist()


def test_lookup_order(isolated, monkeypatch):
    explicit = fake_mnist(isolated / "explicit", n_train=11)
    env = fake_mnist(isolated / "env", n_train=12)
    tv_cwd = fake_mnist(isolated / "cwd" / "data" / "FashionMNIST" / "raw", n_train=13, gz=False)
    debian = fake_mnist(isolated / "debian" / "fashion-mnist", n_train=14)
    monkeypatch.setenv(data.ENV_VAR, str(env))
    assert data.load_fashion_mnist(explicit)["source"] == explicit.resolve()
    assert data.load_fashion_mnist(explicit)["train_images"].shape[0] == 11
    assert data.load_fashion_mnist()["source"] == env.resolve()
    monkeypatch.delenv(data.ENV_VAR)
    assert data.load_fashion_mnist()["source"] == tv_cwd.resolve()
    assert data.load_fashion_mnist()["train_images"].shape[0] == 13
    monkeypatch.chdir(isolated)
    assert data.load_fashion_mnist()["source"] == debian.resolve()


def test_torchvision_layout_under_data_dir_and_env(isolated, monkeypatch):
    root = isolated / "root"
    fake_mnist(root / "FashionMNIST" / "raw")
    assert data.load_fashion_mnist(root)["source"] == (root / "FashionMNIST" / "raw").resolve()
    monkeypatch.setenv(data.ENV_VAR, str(root))
    assert data.load_fashion_mnist()["source"] == (root / "FashionMNIST" / "raw").resolve()


def test_incomplete_copy_is_skipped_with_a_warning(isolated):
    partial = fake_mnist(isolated / "partial")
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="incomplete, missing t10k-labels-idx1-ubyte"):
        data.load_fashion_mnist(partial)
    fake_mnist(isolated / "debian" / "fashion-mnist")
    with pytest.warns(UserWarning, match="incomplete"):
        fm = data.load_fashion_mnist(partial)
    assert fm["source"] == (isolated / "debian" / "fashion-mnist").resolve()


def test_corrupt_file_in_data_dir_names_it(isolated):
    d = fake_mnist(isolated / "bad")
    p = d / "train-labels-idx1-ubyte.gz"
    p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:-3]))
    with pytest.raises(DataError, match="truncated") as e:
        data.load_fashion_mnist(d)
    assert str(p) in str(e.value)


def test_inconsistent_counts_name_both_files(isolated):
    d = fake_mnist(isolated / "bad")
    write_idx(d / "train-labels-idx1-ubyte.gz", torch.zeros(7, dtype=torch.uint8))
    with pytest.raises(DataError, match="20 images but .* has 7 labels"):
        data.load_fashion_mnist(d)


def test_label_out_of_range(isolated):
    d = fake_mnist(isolated / "bad")
    write_idx(d / "t10k-labels-idx1-ubyte.gz", torch.full((10,), 10, dtype=torch.uint8))
    with pytest.raises(DataError, match="label 10 is out of range"):
        data.load_fashion_mnist(d)


def test_cache_is_keyed_by_resolved_path(isolated):
    d = fake_mnist(isolated / "c")
    a = data.load_fashion_mnist(d)
    b = data.load_fashion_mnist(isolated / "c" / ".." / "c")
    assert a["train_images"] is b["train_images"]
    data.clear_cache()
    assert data.load_fashion_mnist(d)["train_images"] is not a["train_images"]


def test_raw_files_preferred_over_gz(isolated):
    d = fake_mnist(isolated / "both", n_train=20)
    fake_mnist(d, n_train=5, gz=False)
    assert data.load_fashion_mnist(d)["train_images"].shape[0] == 5


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------


def test_mnist_from_a_folder_and_torchvision_layout(isolated, monkeypatch):
    d = fake_mnist(isolated / "m", n_train=9)
    m = data.load_mnist(d)
    assert m["train_images"].shape == (9, 28, 28) and m["classes"][3] == "3"
    root = isolated / "root"
    fake_mnist(root / "MNIST" / "raw", n_train=8)
    monkeypatch.setenv(data.ENV_VAR, str(root))
    assert data.load_mnist()["train_images"].shape[0] == 8


def test_mnist_ignores_bare_jointnet_data(isolated, monkeypatch):
    # $JOINTNET_DATA holding bare IDX files means Fashion-MNIST: load_mnist must not take them
    env = fake_mnist(isolated / "env")
    monkeypatch.setenv(data.ENV_VAR, str(env))
    with pytest.raises(DataError, match="MNIST not found") as e:
        data.load_mnist()
    assert str(env / "MNIST" / "raw") in str(e.value)


# --------------------------------------------------------------------------------------------
# CIFAR-100 python pickles
# --------------------------------------------------------------------------------------------


def test_cifar100_round_trip(tmp_path):
    root, splits = tiny_cifar(tmp_path / "c", n_train_per_class=2)
    c = data.load_cifar100(root)
    assert torch.equal(c["train_images"], splits["train"]["images"])
    assert c["train_images"].shape == (200, 3, 32, 32)
    assert c["train_fine_labels"].tolist() == splits["train"]["fine_labels"]
    assert c["test_coarse_labels"].tolist() == splits["test"]["coarse_labels"]
    assert c["fine_label_names"][7] == "fine7" and len(c["coarse_label_names"]) == 20
    assert c["source"] == (root / "cifar-100-python").resolve()
    # also found when data_dir is the cifar-100-python folder itself, and via $JOINTNET_DATA
    assert data.load_cifar100(root / "cifar-100-python")["train_images"] is c["train_images"]


def test_cifar100_via_env(tmp_path, monkeypatch):
    root, _ = tiny_cifar(tmp_path / "c")
    monkeypatch.setenv(data.ENV_VAR, str(root))
    assert data.load_cifar100()["train_images"].shape == (100, 3, 32, 32)


def test_cifar100_file_layout_is_the_published_one(tmp_path):
    """The written pickles use Python 2 strings and numpy's array reconstruction, like the originals."""
    root, _ = tiny_cifar(tmp_path / "c")
    blob = (root / "cifar-100-python" / "train").read_bytes()
    assert blob[:2] == b"\x80\x02"
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob and b"cnumpy\ndtype\n" in blob
    meta = (root / "cifar-100-python" / "meta").read_bytes()
    assert b"fine_label_names" in meta and b"numpy" not in meta


# Genuine pickles written by numpy 2.4 (protocol 2 and 5) of
# {'data': arange(6, uint8).reshape(2, 3), 'fine_labels': [1, 2], 'x': array([1, -2, 3], '>i4')}.
NUMPY_P2 = (
    b"\x80\x02}q\x00(X\x04\x00\x00\x00dataq\x01cnumpy._core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03"
    b"K\x00\x85q\x04c_codecs\nencode\nq\x05X\x01\x00\x00\x00bq\x06X\x06\x00\x00\x00latin1q\x07\x86q\x08Rq\t\x87q\n"
    b"Rq\x0b(K\x01K\x02K\x03\x86q\x0ccnumpy\ndtype\nq\rX\x02\x00\x00\x00u1q\x0e\x89\x88\x87q\x0fRq\x10(K\x03X\x01"
    b"\x00\x00\x00|q\x11NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\x12b\x89h\x05X\x06\x00\x00\x00\x00\x01\x02\x03"
    b"\x04\x05q\x13h\x07\x86q\x14Rq\x15tq\x16bX\x0b\x00\x00\x00fine_labelsq\x17]q\x18(K\x01K\x02eX\x01\x00\x00\x00x"
    b"q\x19h\x02h\x03K\x00\x85q\x1ah\t\x87q\x1bRq\x1c(K\x01K\x03\x85q\x1dh\rX\x02\x00\x00\x00i4q\x1e\x89\x88\x87q\x1f"
    b"Rq (K\x03X\x01\x00\x00\x00>q!NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tq\"b\x89h\x05X\x10\x00\x00\x00\x00\x00"
    b"\x00\x01\xc3\xbf\xc3\xbf\xc3\xbf\xc3\xbe\x00\x00\x00\x03q#h\x07\x86q$Rq%tq&bu."
)
NUMPY_P5 = (
    b"\x80\x05\x95\xea\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x04data\x94\x8c\x13numpy._core.numeric\x94\x8c\x0b"
    b"_frombuffer\x94\x93\x94(\x96\x06\x00\x00\x00\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x94\x8c\x05numpy\x94"
    b"\x8c\x05dtype\x94\x93\x94\x8c\x02u1\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01|\x94NNNJ\xff\xff\xff\xffJ\xff\xff"
    b"\xff\xffK\x00t\x94bK\x02K\x03\x86\x94\x8c\x01C\x94t\x94R\x94\x8c\x0bfine_labels\x94]\x94(K\x01K\x02e\x8c\x01"
    b"x\x94h\x04(\x96\x0c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\xff\xff\xff\xfe\x00\x00\x00\x03\x94h\x08\x8c"
    b"\x02i4\x94\x89\x88\x87\x94R\x94(K\x03\x8c\x01>\x94NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00t\x94bK\x03\x85"
    b"\x94h\x0ft\x94R\x94u."
)


@pytest.mark.parametrize("blob", [NUMPY_P2, NUMPY_P5], ids=["protocol2", "protocol5"])
def test_restricted_unpickler_reads_numpy_pickles_without_numpy(tmp_path, blob):
    p = tmp_path / "np.pkl"
    p.write_bytes(blob)
    d = data._load_pickle(p)
    assert d["data"].dtype == torch.uint8 and d["data"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert d["x"].dtype == torch.int32 and d["x"].tolist() == [1, -2, 3]
    assert d["fine_labels"] == [1, 2]


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_other_globals(tmp_path):
    marker = tmp_path / "pwned"
    d = tmp_path / "evil" / "cifar-100-python"
    tiny_cifar(tmp_path / "evil")
    (d / "train").write_bytes(pickle.dumps({"data": _Evil(marker)}, protocol=2))
    with pytest.raises(DataError, match="refused to load global") as e:
        data.load_cifar100(tmp_path / "evil")
    assert str(d / "train") in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("obj", [{"data": [object]}, {"data": print}, {"x": __import__("collections").OrderedDict()}])
def test_restricted_unpickler_refuses_builtins_and_classes(tmp_path, obj):
    p = tmp_path / "p"
    p.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match="refused to load global"):
        data._load_pickle(p)


def test_cifar100_truncated_pickle_names_the_file(tmp_path):
    root, _ = tiny_cifar(tmp_path / "c")
    p = root / "cifar-100-python" / "test"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        data.load_cifar100(root)
    assert str(p) in str(e.value)


def test_cifar100_bad_shapes_and_labels(tmp_path):
    root, splits = tiny_cifar(tmp_path / "c")
    bad = dict(splits["train"], fine_labels=[100] * 100)
    write_cifar100(root / "cifar-100-python", train=bad, test=splits["test"])
    data.clear_cache()
    with pytest.raises(DataError, match="'fine_labels' has labels outside 0..99"):
        data.load_cifar100(root)
    bad = dict(splits["train"], coarse_labels=[0] * 99)
    write_cifar100(root / "cifar-100-python", train=bad, test=splits["test"])
    data.clear_cache()
    with pytest.raises(DataError, match="'coarse_labels' has 99 labels for 100 images"):
        data.load_cifar100(root)
    p = root / "cifar-100-python" / "train"
    p.write_bytes(pickle.dumps({b"data": [1, 2, 3]}, protocol=2))
    data.clear_cache()
    with pytest.raises(DataError, match="'data' must be a uint8 array"):
        data.load_cifar100(root)


def test_cifar100_missing_lists_places(isolated, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(isolated / "env"))
    with pytest.raises(DataError, match="CIFAR-100 not found") as e:
        data.load_cifar100(isolated / "given")
    msg = str(e.value)
    for p in (isolated / "given" / "cifar-100-python", isolated / "given", isolated / "env" / "cifar-100-python"):
        assert str(p) in msg
    assert "cifar-100-python.tar.gz" in msg

