"""The ``sepmeasure`` command: run study scripts, write reports, list studies.

::

    sepmeasure study <name>|all [--quick|--full] [--seeds N] [--out DIR]
                     [--executor local|processes|dask] [--scheduler ADDR] [--workers N]
                     [--device DEV] [--threads N] [--studies DIR] [--report] [--no-progress] [--wait]
    sepmeasure report [DIR] [--reference DIR]
    sepmeasure list [--studies DIR]

Studies are scripts ``s<N>_<name>.py`` in a ``studies/`` folder (``--studies DIR``; default
``./studies``, else the ``studies/`` folder beside the package's source tree), each defining a
module-level ``STUDY`` (a :class:`sepmeasure.study.Study`). They are loaded from their file
paths; the package never imports them. A study is named by its file stem
(``s1_synchronicity``), its number (``s1``) or the rest of the stem (``synchronicity``).

Exit status: 0 when everything ran; 1 when a study failed (the others still run; a study whose
folder another run holds fails, unless ``--wait``); 2 on bad input (unknown study, an output path
that is a file, an unreachable scheduler, a study folder that ``report`` cannot read as one run,
...); 130 on Ctrl-C and 128 + N on signal N (SIGTERM, SIGHUP), after the workers are shut down.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .study.errors import StudyTerminated
from .study.executors import EXECUTORS

__all__ = ["main", "run_study_script", "discover_studies", "load_study", "default_studies_dir", "resolve_studies",
           "CommandError"]

_SCRIPT = re.compile(r"^s(\d+)_([A-Za-z0-9_]+)\.py$")
_MODULE_PREFIX = "sepmeasure_studies"


class CommandError(Exception):
    """Bad input to the command line: printed as ``error: ...`` with exit status 2."""


# --------------------------------------------------------------------------------------------
# finding and loading study scripts


def default_studies_dir() -> Path | None:
    """``./studies`` if it exists, else ``studies/`` beside the package's source tree, else None."""
    here = Path.cwd() / "studies"
    if here.is_dir():
        return here
    beside = Path(__file__).resolve().parent.parent / "studies"
    return beside if beside.is_dir() else None


def _studies_dir(arg: str | None) -> Path:
    if arg is not None:
        path = Path(arg)
        if not path.is_dir():
            raise CommandError(f"--studies: expected a folder of study scripts (s<N>_<name>.py), got {arg!r}, "
                               f"which is {'a file' if path.exists() else 'missing'}")
        return path
    found = default_studies_dir()
    if found is None:
        raise CommandError("no studies folder found: expected ./studies or studies/ beside the sepmeasure "
                           "source tree; pass --studies DIR")
    return found


def discover_studies(directory: str | os.PathLike) -> dict[str, Path]:
    """Study scripts ``s<N>_<name>.py`` in ``directory``, ``{stem: path}`` ordered by N.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> for f in ("s10_b.py", "s2_a.py", "notes.py"): _ = (d / f).write_text("")
    >>> list(discover_studies(d))
    ['s2_a', 's10_b']
    """
    folder = Path(directory)
    found = []
    for path in folder.iterdir() if folder.is_dir() else ():
        m = _SCRIPT.match(path.name)
        if m and path.is_file():
            found.append((int(m.group(1)), path.stem, path))
    return {stem: path for _, stem, path in sorted(found)}


def load_study(path: str | os.PathLike):
    """Import a study script from its path and return its ``STUDY``.

    The module is registered as ``sepmeasure_studies.<stem>`` (so its functions can be pickled
    for process pools and Dask workers).
    """
    from .study import Study

    path = Path(path)
    name = f"{_MODULE_PREFIX}.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CommandError(f"{path}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise
    study = getattr(module, "STUDY", None)
    if not isinstance(study, Study):
        raise TypeError(f"{path}: expected a module-level STUDY = sepmeasure.study.Study(...), got "
                        f"{type(study).__name__ if study is not None else 'none'}")
    return study


def resolve_studies(names: Sequence[str], available: dict[str, Path]) -> list[tuple[str, Path]]:
    """Map the names given on the command line (``all``, a stem, ``s1`` or ``synchronicity``) to scripts."""
    if not available:
        raise CommandError("no study scripts (s<N>_<name>.py) found; pass --studies DIR")
    if list(names) == ["all"]:
        return list(available.items())
    out: list[tuple[str, Path]] = []
    for name in names:
        hits = [stem for stem in available
                if name in (stem, stem.split("_", 1)[0], stem.split("_", 1)[1] if "_" in stem else stem)]
        if not hits:
            raise CommandError(f"unknown study {name!r}; known studies: {', '.join(available)} (or 'all')")
        if len(hits) > 1:
            raise CommandError(f"study name {name!r} is ambiguous: {', '.join(hits)}")
        if hits[0] not in [s for s, _ in out]:
            out.append((hits[0], available[hits[0]]))
    return out


# --------------------------------------------------------------------------------------------
# commands


def _int_at_least(minimum: int, what: str) -> Callable[[str], int]:
    """An argparse ``type``: an integer ``>= minimum``, else an error saying ``expected <what>``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_int = _int_at_least(1, "a positive integer")
_non_negative_int = _int_at_least(0, "a non-negative integer")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="small grids, few epochs (default)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the real run: more seeds, epochs and data")
    p.set_defaults(mode="quick")
    p.add_argument("--seeds", type=_positive_int, default=None, help="number of seeds (default: the study's)")
    p.add_argument("--out", default="reports", help="output folder (default: reports)")
    p.add_argument("--executor", choices=tuple(EXECUTORS), default=None,
                   help="where configurations run (default: local; dask when --scheduler is given)")
    p.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://host:8786")
    p.add_argument("--workers", type=_positive_int, default=None,
                   help="processes of the pool, or workers of a local Dask cluster")
    p.add_argument("--device", default=None, help="torch device for the studies (default: cpu)")
    p.add_argument("--threads", type=_non_negative_int, default=1,
                   help="torch threads per configuration (default: 1, fastest for the small models of the "
                        "studies; 0 keeps torch's default)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--wait", action="store_true",
                   help="when another run writes a study's folder, wait for it (default: that study fails)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sepmeasure", description="Run studies that check published claims "
                                     "about linear separability in neural networks, and write their reports.")
    sub = parser.add_subparsers(dest="command", metavar="{study,report,list}")
    sub.required = True
    p_study = sub.add_parser("study", help="run one study, several, or all")
    p_study.add_argument("names", nargs="+", metavar="name", help="study name (s1, synchronicity, "
                         "s1_synchronicity) or 'all'")
    _add_run_options(p_study)
    p_study.add_argument("--studies", default=None, help="folder of study scripts (default: ./studies)")
    p_study.add_argument("--report", action="store_true", help="also write the reports")
    p_report = sub.add_parser("report", help="write the reports of finished studies")
    p_report.add_argument("dir", nargs="?", default="reports", help="output folder of the studies (default: reports)")
    p_report.add_argument("--reference", default=None, metavar="DIR",
                          help="a reference run's output folder: the index compares each verdict with it")
    p_list = sub.add_parser("list", help="list the study scripts found")
    p_list.add_argument("--studies", default=None, help="folder of study scripts (default: ./studies)")
    return parser


def _check_out(out: str) -> Path:
    from .study import check_output_folder

    try:
        return check_output_folder(out, name="--out")
    except NotADirectoryError as exc:
        raise CommandError(str(exc)) from None


def _executor_kind(args: argparse.Namespace) -> str:
    from .study import check_executor

    try:
        return check_executor(args.executor, args.scheduler, option="--executor")
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _summary_line(result) -> str:
    verdicts = "; ".join(f"{c.claim}: {c.verdict}" for c in result.claims) or "no claims"
    return (f"{result.name}: {result.n_configurations} configurations ({result.n_computed} computed, "
            f"{result.n_cached} cached) in {result.wall_time_s:.1f} s -> {result.out_dir}\n  claims: {verdicts}")


def _run_studies(studies: list[tuple[str, Any]], args: argparse.Namespace, *, write_reports: bool) -> int:
    """Run each (label, study-or-path); a failure is reported and the rest still run."""
    from .study import SchedulerUnreachableError, make_executor

    out = _check_out(args.out)
    kind = _executor_kind(args)
    try:
        executor = make_executor(kind, scheduler=args.scheduler, workers=args.workers)
    except SchedulerUnreachableError as exc:
        raise CommandError(str(exc)) from None
    failed: list[str] = []
    done: list[Path] = []
    started = time.perf_counter()
    with executor:
        for label, item in studies:
            try:
                study = load_study(item) if isinstance(item, Path) else item
                result = study.run(args.mode, seeds=args.seeds, out=out, executor=executor, device=args.device,
                                   threads=args.threads or None, progress=args.progress, wait=args.wait)
            except KeyboardInterrupt:
                raise
            except Exception as exc:
                failed.append(label)
                detail = "" if type(exc).__name__.startswith("Study") else "\n" + traceback.format_exc()
                print(f"error: study {label} failed: {type(exc).__name__}: {exc}{detail}", file=sys.stderr)
                continue
            print(_summary_line(result))
            done.append(result.out_dir)
    if write_reports and done:
        from .report import write_index, write_study_report

        for study_dir in done:
            paths = write_study_report(study_dir, index=False)
            print(f"report: {paths['html']}")
        print(f"index: {write_index(out)['html']}")
    print(f"{len(studies) - len(failed)} of {len(studies)} studies finished in {time.perf_counter() - started:.1f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _cmd_study(args: argparse.Namespace) -> int:
    available = discover_studies(_studies_dir(args.studies))
    chosen = resolve_studies(args.names, available)
    return _run_studies(chosen, args, write_reports=args.report)


def _cmd_report(args: argparse.Namespace) -> int:
    import pandas as pd

    from .report import find_studies, write_report
    from .storage import remove_dead_temporaries
    from .study import StudyFolderError, verify_study_folder

    try:
        root = Path(args.dir)
        if root.is_dir():
            remove_dead_temporaries(root)
            for study_dir in find_studies(root):
                verify_study_folder(study_dir)
        written = write_report(args.dir, reference=args.reference)
    except (FileNotFoundError, NotADirectoryError, StudyFolderError) as exc:
        raise CommandError(str(exc)) from None
    except (ValueError, pd.errors.ParserError) as exc:  # a table or study.json the checks could not vouch for
        raise CommandError(f"{args.dir}: a study's output cannot be read ({type(exc).__name__}: {exc}); run the "
                           f"study again") from None
    for name, paths in written["studies"].items():
        print(f"{name}: {paths['html']}")
    print(f"index: {written['index']}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    folder = _studies_dir(args.studies)
    available = discover_studies(folder)
    if not available:
        print(f"no study scripts (s<N>_<name>.py) in {folder}")
        return 0
    print(f"studies in {folder}:")
    for stem, path in available.items():
        try:
            study = load_study(path)
            info = f"{study.title or study.name}" + (f" ({study.paper})" if study.paper else "")
            grids = f"quick: {len(study.configurations('quick'))} runs, full: {len(study.configurations('full'))} runs"
            print(f"  {stem:<28} {info}\n  {'':<28} {len(study.claims)} claims; {grids}")
        except Exception as exc:
            print(f"  {stem:<28} (cannot be loaded: {type(exc).__name__}: {exc})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sepmeasure`` command; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return {"study": _cmd_study, "report": _cmd_report, "list": _cmd_list}[args.command](args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished configurations are cached, run the same command again to resume",
              file=sys.stderr)
        return 130
    except StudyTerminated as exc:
        print(f"{exc}; finished configurations are cached, run the same command again to resume",
              file=sys.stderr)
        return 128 + exc.signum


def run_study_script(study, argv: Sequence[str] | None = None, *, exit: bool = True) -> int:
    """Command line of a single study script (``python studies/s1_synchronicity.py --quick``).

    Accepts the options of ``sepmeasure study`` (without a name), runs the study and writes its
    report and the index (``--no-report`` to skip). Exits with the status unless ``exit=False``.
    """
    from .study import Study

    if not isinstance(study, Study):
        raise TypeError(f"study: expected a sepmeasure.study.Study, got {type(study).__name__}")
    parser = argparse.ArgumentParser(prog=study.name, description=study.title or study.name)
    _add_run_options(parser)
    parser.add_argument("--no-report", dest="report", action="store_false", help="do not write the report")
    args = parser.parse_args(argv)
    try:
        code = _run_studies([(study.name, study)], args, write_reports=args.report)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except StudyTerminated as exc:
        print(f"{exc}; finished configurations are cached, run the same command again to resume",
              file=sys.stderr)
        code = 128 + exc.signum
    if exit:
        sys.exit(code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
