"""The cffi extension is the one thing pyproject.toml cannot declare: cffi's setuptools
integration (``cffi_modules``) generates ``kmigratedd._native`` from native/build_shim.py and
compiles it at install time.  Everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build_shim.py:ffibuilder"])
