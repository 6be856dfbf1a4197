"""An NTK larger than memory: a 30 000 x 30 000 trace kernel of an mnist1d MLP written to disk.

``empirical_ntk(mlp, X, output="trace", out=path)`` writes the kernel block by block into a
standard ``.npy`` file (3.6 GB in float32). The script reports its wall time and the peak
anonymous memory of the process during the computation (``RssAnon`` of /proc/self/status,
sampled every 50 ms), once in this process and once with ``executor=`` a 2-worker
``dask.distributed.LocalCluster`` (the client writes the blocks; the workers' own memory is
theirs), checks that both files are equal on a sample of rows and that a sample of blocks
equals the in-memory kernel of those rows, and deletes the files.

Run with ``python benchmarks/ntk_disk.py [--n 30000] [--dir /tmp]`` on an otherwise idle machine
(needs about twice the kernel's size free on disk).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sepmeasure as sm  # noqa: E402


def _rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


class PeakAnon:
    """Peak RssAnon of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self):
        self.start = _rss_anon_kib()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, _rss_anon_kib())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_anon_kib())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=30_000, help="rows of the kernel (default 30000)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the kernel files go")
    args = parser.parse_args()
    torch.manual_seed(0)
    split = sm.load_dataset("mnist1d", split="both", seed=0, size=args.n, test_fraction=0.1)
    X = torch.cat([split.train.X, split.test.X]).float()[: args.n].contiguous()
    model = sm.MLP(X.shape[1], [100, 100], 10).eval()
    gib = args.n ** 2 * 4 / 2**30
    print(f"mnist1d MLP {X.shape[1]}-100-100-10, {args.n} inputs: trace kernel {args.n} x {args.n} float32 "
          f"({gib:.2f} GiB), {torch.get_num_threads()} threads")
    folder = Path(tempfile.mkdtemp(dir=args.dir, prefix="ntk-disk-"))
    local_path, dask_path = folder / "local.npy", folder / "dask.npy"
    try:
        with PeakAnon() as mem:
            start = time.perf_counter()
            K = sm.empirical_ntk(model, X, output="trace", out=local_path, progress=False)
            local_t = time.perf_counter() - start
        print(f"one process:       {local_t:7.1f} s, peak anonymous memory {mem.peak / 2**20:.2f} GiB "
              f"(at start {mem.start / 2**20:.2f} GiB)")
        rows = torch.randperm(args.n, generator=torch.Generator().manual_seed(1))[:256]
        ref = sm.empirical_ntk(model, X[rows], output="trace", method="jacobian", progress=False)
        got = torch.as_tensor(np.asarray(K[np.ix_(rows.numpy(), rows.numpy())]))
        rel = float((got.double() - ref.double()).abs().max() / ref.double().abs().max())
        print(f"256 sampled rows against the in-memory jacobian kernel: max relative difference {rel:.1e}")
        del K
        from dask.distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            with PeakAnon() as mem:
                start = time.perf_counter()
                K2 = sm.empirical_ntk(model, X, output="trace", out=dask_path, executor=client, progress=False)
                dask_t = time.perf_counter() - start
        print(f"2-worker cluster:  {dask_t:7.1f} s, peak anonymous memory of the client {mem.peak / 2**20:.2f} GiB; "
              f"one process / cluster = {local_t / dask_t:.2f}x")
        K = np.load(local_path, mmap_mode="r")
        same = all(np.array_equal(K[i], K2[i]) for i in rows.tolist())
        print(f"cluster file equals the one-process file on the 256 sampled rows: {same}")
    finally:
        for p in folder.glob("*"):
            p.unlink()
        folder.rmdir()


if __name__ == "__main__":
    main()
