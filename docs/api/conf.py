"""Sphinx configuration of the API reference (built from the docstrings).

Build it with warnings as errors (what the tests and CI do)::

    python -m sphinx -W --keep-going -b html docs/api build/api

Needs the ``docs`` extra (``pip install -e ".[docs]"``: Sphinx, and TensorFlow for the
``bluefog.tensorflow`` page).
"""

import os
import sys

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

project = "bluefog"
author = "the bluefog authors"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon"]
exclude_patterns = ["_build"]
autodoc_default_options = {"imported-members": True, "member-order": "bysource"}
autodoc_typehints = "none"          # signatures stay as users call them
autodoc_inherit_docstrings = False  # the Keras base classes' docstrings are not ours
napoleon_google_docstring = True
napoleon_numpy_docstring = False
html_theme = "alabaster"
html_static_path = []
