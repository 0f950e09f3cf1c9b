"""Execution and parameters: the `ParamStore`, compilation of a net to torch modules, and the
optimizer groups its train policy asks for."""
