"""`bench/warp_folder.py` runs end to end on a tiny tree and reports every figure the README quotes.

Only that it runs and what it reports are checked here: speed is measured by
running the bench, never by a timed test.
"""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_warp_folder_bench_reports_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    cmd = [sys.executable, str(ROOT / "bench" / "warp_folder.py"), "--photos", str(ROOT / "examples" / "photos"),
           "--files", "3", "--repeats", "2", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())
    assert results["files"] == 3
    assert results["kernel"]["grid_sample_us"] > 0 and results["kernel"]["ratio"] > 0
    assert results["kernel"]["rounds"] == 3 * 2 * len(results["files_per_s"])  # spread between the loops
    assert {"pillow", "dec_warp"} <= set(results["files_per_s"])
    for name in results["files_per_s"]:
        cost = results["output_encode"][name]
        assert cost["png_files"] == 3 and cost["encode_ms"] > 0 and cost["kB"] > 0
    assert 0 < results["dec_vs_pillow"] and 0 < results["dec_vs_pillow_median_round"]
    assert "dec warp / pillow" in proc.stdout and "re-encoding" in proc.stdout
