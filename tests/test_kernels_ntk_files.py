"""Out-of-core and distributed NTK: a .npy written block by block equals the in-memory kernel, a
computation killed with SIGKILL resumes with the missing blocks only, and blocks computed on a
process pool or a Dask LocalCluster equal the local ones."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from sepmeasure.kernels import empirical_ntk
from sepmeasure.kernels.kernel_files import progress_path
from sepmeasure.models import CNN, MLP


def small(seed=0):
    torch.manual_seed(seed)
    return MLP(5, [7, 6], 3).double().eval(), torch.randn(9, 5, dtype=torch.float64), torch.randn(4, 5,
                                                                                                   dtype=torch.float64)


@pytest.mark.parametrize("output", ["full", "trace"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_file_equals_memory(tmp_path, output, symmetric):
    model, x1, x2 = small()
    other = None if symmetric else x2
    ref = empirical_ntk(model, x1, other, output=output, block_size=4).numpy()
    path = tmp_path / "k.npy"
    got = empirical_ntk(model, x1, other, output=output, block_size=4, out=path)
    assert isinstance(got, np.memmap) and got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_allclose(np.load(path, mmap_mode="r"), ref, rtol=1e-12, atol=0)
    record = json.loads(progress_path(path).read_text())
    n_pairs = 6 if symmetric else 3          # 9 rows in 3 blocks: 6 upper pairs; 3 × 1 blocks for 9 × 4
    assert len(record["finished"]) == n_pairs
    again = empirical_ntk(model, x1, other, output=output, block_size=4, out=path)   # complete: nothing to do
    np.testing.assert_array_equal(again, got)


def test_file_of_another_computation_is_refused(tmp_path):
    model, x1, x2 = small()
    path = tmp_path / "k.npy"
    empirical_ntk(model, x1, output="trace", block_size=4, out=path)
    with pytest.raises(ValueError, match="out: .*holds another"):
        empirical_ntk(model, x1 + 1, output="trace", block_size=4, out=path)
    np.save(tmp_path / "other.npy", np.zeros(3))
    with pytest.raises(ValueError, match="out: .*without its record"):
        empirical_ntk(model, x1, output="trace", out=tmp_path / "other.npy")
    with pytest.raises(TypeError, match="out: expected a path"):
        empirical_ntk(model, x1, out=3)
    with pytest.raises(ValueError, match="executor: expected"):
        empirical_ntk(model, x1, executor="threads")


SCRIPT = textwrap.dedent("""
    import sys, torch
    from sepmeasure.kernels import empirical_ntk
    from sepmeasure.kernels import ntk_structured
    from sepmeasure.models import CNN
    slow = float(sys.argv[2])
    block = ntk_structured.STRUCTURED.block
    def paced(*args, **kwargs):
        out = block(*args, **kwargs)
        sys.stdout.write("block\\n"); sys.stdout.flush()
        import time; time.sleep(slow)
        return out
    ntk_structured.STRUCTURED = ntk_structured.STRUCTURED.__class__(ntk_structured.STRUCTURED.plan, paced, False)
    import sepmeasure.kernels.ntk as ntk
    ntk._BUILDERS["structured"] = ntk_structured.STRUCTURED
    torch.manual_seed(0)
    model = CNN(1, [4, 3], 3, dim=1).double().eval()
    x = torch.randn(12, 9, dtype=torch.float64)
    empirical_ntk(model, x, block_size=3, out=sys.argv[1], method="structured", progress=False)
    print("done")
""")


def test_killed_computation_resumes_with_missing_blocks(tmp_path):
    path = tmp_path / "k.npy"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(path), "0.2"], stdout=subprocess.PIPE, text=True)
    seen = 0
    while seen < 3:                          # let three blocks finish, then kill without warning
        assert proc.stdout.readline() == "block\n"
        seen += 1
    time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {tuple(p) for p in json.loads(progress_path(path).read_text())["finished"]}
    assert 2 <= len(before) < 10             # 12 rows in 4 blocks: 10 upper pairs
    rerun = subprocess.run([sys.executable, str(script), str(path), "0"], capture_output=True, text=True, check=True)
    assert rerun.stdout.count("block") == 10 - len(before)
    torch.manual_seed(0)
    model = CNN(1, [4, 3], 3, dim=1).double().eval()
    x = torch.randn(12, 9, dtype=torch.float64)
    ref = empirical_ntk(model, x, method="jacobian").numpy()
    np.testing.assert_allclose(np.load(path, mmap_mode="r"), ref, rtol=1e-10, atol=1e-12)


def test_processes_and_dask_equal_local(tmp_path):
    from distributed import Client, LocalCluster
    torch.manual_seed(0)
    model = CNN(1, [4, 3], 3, dim=1).double().eval()
    x = torch.randn(10, 9, dtype=torch.float64)
    ref = empirical_ntk(model, x, block_size=4, output="trace")
    got = empirical_ntk(model, x, block_size=4, output="trace", executor="processes")
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)
    # worker processes are exercised by executor="processes"; the cluster runs its two workers in threads
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        disk = empirical_ntk(model, x, x[:7], block_size=4, executor=client, out=tmp_path / "d.npy")
    np.testing.assert_allclose(disk, empirical_ntk(model, x, x[:7], block_size=4).numpy(), rtol=1e-12, atol=0)


def test_an_overflowing_kernel_is_an_error_in_memory_and_on_disk(tmp_path):
    """Finite float32 inputs of 1e30 overflow the full NTK: an error naming the inputs, never inf/NaN
    returned; the same inputs at 1 give a finite kernel."""
    import sepmeasure as sm

    torch.manual_seed(0)
    model = sm.MLP(3, [4], 2)
    x = torch.randn(5, 3)
    assert bool(torch.isfinite(sm.empirical_ntk(model, x, progress=False)).all())
    with pytest.raises(ValueError, match=r"x1, x2: the NTK overflows torch.float32"):
        sm.empirical_ntk(model, x * 1e30, progress=False)
    with pytest.raises(ValueError, match=r"x1, x2: the NTK overflows float32"):
        sm.empirical_ntk(model, x * 1e30, out=tmp_path / "k.npy", progress=False)
