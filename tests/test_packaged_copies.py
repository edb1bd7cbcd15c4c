"""The package carries copies of the unit files and the default registry (an installed tsfmd
has no checkout to read them from); each copy must be byte-for-byte the file in the repo.

A unit edit once reached packaging/ but not the package, so `tsfmd install-unit` installed a
unit without LimitNOFILE=: this test makes that drift a red build.
"""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

COPIES = [
    ("packaging/systemd/tsfmd.service", "tsfmd/data/systemd/tsfmd.service"),
    ("packaging/systemd/gpu.conf", "tsfmd/data/systemd/gpu.conf"),
    ("packaging/sysusers.d/tsfmd.conf", "tsfmd/data/systemd/sysusers.conf"),
    ("etc/tsfmd/tsfmd.yaml", "tsfmd/data/tsfmd.yaml"),
]


@pytest.mark.parametrize("source,copy", COPIES)
def test_packaged_copy_equals_the_repo_file(source, copy):
    assert (REPO / copy).read_bytes() == (REPO / source).read_bytes(), (
        f"{copy} differs from {source}: copy the edited file over (cp {source} {copy})")


def test_install_unit_writes_the_repo_unit():
    from tsfmd.daemon.install_unit import packaged

    assert packaged("tsfmd.service") == (REPO / COPIES[0][0]).read_text(encoding="utf-8")
