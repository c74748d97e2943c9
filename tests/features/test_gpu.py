"""The series' ops on a GPU backend against the CPU (test-backend-ops compares every
backend with the CPU one): the in-place and ids forms of GATED_DELTA_NET that the
GDN knobs use. Needs a device: skipped with the reason elsewhere."""
import pytest

from conftest import bin_dir, run

pytestmark = pytest.mark.gpu


def test_gated_delta_net_forms_match_the_cpu_on_the_device():
    proc = run([bin_dir("paged") / "test-backend-ops", "test", "-o", "GATED_DELTA_NET"], timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "FAIL" not in proc.stdout
