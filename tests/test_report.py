"""Reports from the tidy tables: figures, Markdown and self-contained HTML per study and an index;
the HTML is rendered in headless Chromium when it is installed."""
from __future__ import annotations

import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sepmeasure.claims import Comparison, MonotoneTrend
from sepmeasure.report import FigureSpec, render_figure, write_index, write_report, write_study_report
from sepmeasure.study import Study

CHROMIUM = Path("/usr/bin/chromium")
PAPER = "Zhang et al. 2023, arXiv 2307.13962"


def run_one(config: dict) -> list[dict]:
    rng = np.random.default_rng(10 * config["seed"] + config["width"])
    rows = []
    for layer in range(1, 4):
        for epoch in range(3):
            rows.append({"layer": layer, "epoch": epoch, "measure": "md_lsm",
                         "value": float(0.5 + 0.1 * layer + 0.05 * epoch + rng.normal(0, 0.01))})
    rows.append({"layer": 0, "epoch": 2, "measure": "accuracy", "value": 0.8 + 0.01 * config["width"] / 8})
    return rows


def make_study(name: str = "s1_demo", extra_figures=()) -> Study:
    sep = {"measure": "md_lsm"}
    return Study(
        name=name, run_one=run_one, quick={"width": [8, 16], "model": "mlp"}, full={"width": [8, 16, 32]},
        title="Demo: separability rises with depth", paper=PAPER,
        description="A synthetic study used to test the report.",
        claims=[
            MonotoneTrend(name="deeper-more-separable", paper=PAPER, table="results", where=sep,
                          statement="layers closer to the output are more linearly separable", x="layer",
                          y="value", within=("width", "epoch"), by="width"),
            Comparison(name="wider-better", paper=PAPER, statement="wider networks are more accurate",
                       value="value", where={"measure": "accuracy"}, a={"width": 16}, b={"width": 8},
                       at_least=0.5, caveat="a tiny synthetic table"),
        ],
        summarize=lambda r: {"final": r[(r["measure"] == "md_lsm") & (r["epoch"] == 2)][
            ["width", "seed", "layer", "value"]].reset_index(drop=True)},
        figures=[
            FigureSpec(name="curves", table="results", kind="line", x="epoch", y="value", hue="layer",
                       col="width", where=sep, title="MD-LSM against epoch", caption="mean and sd over seeds"),
            FigureSpec(name="bars", table="final", kind="bar", x="layer", y="value", hue="width"),
            FigureSpec(name="grid", table="final", kind="heatmap", x="layer", y="width", value="value"),
            *extra_figures,
        ])


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    make_study().run(out=out, progress=False)
    make_study("s2_other").run(out=out, progress=False)
    write_report(out)
    return out


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []
        self.ids: set[str] = set()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if "src" in a:
            self.srcs.append(a["src"])
        if tag == "link":
            self.hrefs.append(a.get("href", ""))


def parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def assert_links_resolve(page: Path) -> None:
    links = parse(page)
    for href in links.hrefs:
        assert not re.match(r"^[a-z]+://", href), f"external link {href} in {page}"
        if href.startswith("#"):
            assert href[1:] in links.ids, f"anchor {href} missing in {page}"
        else:
            assert (page.parent / href).is_file(), f"broken link {href} in {page}"
    for src in links.srcs:
        assert src.startswith("data:image/png;base64,"), f"{page} loads {src[:40]} from outside the file"
    assert "script" not in links.tags


# --------------------------------------------------------------------------------------------


def test_report_files_exist_with_tables_figures_and_verdicts(reports):
    for name in ("index.html", "index.md"):
        assert (reports / name).is_file()
    for study in ("s1_demo", "s2_other"):
        d = reports / study
        for name in ("report.html", "report.md", "tables/results.csv", "tables/final.csv", "tables/claims.csv"):
            assert (d / name).is_file(), name
        for fig in ("curves", "bars", "grid"):
            png = (d / "figures" / f"{fig}.png").read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
        assert len(pd.read_csv(d / "tables" / "final.csv")) > 0


def test_study_report_states_claims_numbers_verdicts_and_rules(reports):
    d = reports / "s1_demo"
    claims = pd.read_csv(d / "tables" / "claims.csv")
    page = (d / "report.html").read_text()
    md = (d / "report.md").read_text()
    for text in (page, md):
        assert "layers closer to the output are more linearly separable" in text
        assert PAPER in text
        assert "Demo: separability rises with depth" in text
        for _, row in claims[claims["group"] == "all"].iterrows():
            assert row["verdict"] in text
            assert f"{row['effect']:.3g}"[:4] in text
            assert "sd over" in text
        assert "supported if the 95% bootstrap interval" in text
        assert "width=16" in text  # the per-group table
    # the weaker comparison is not supported, so its caveat is shown
    assert claims.set_index("claim").loc["wider-better", "verdict"] != "supported"
    assert "a tiny synthetic table" in page and "a tiny synthetic table" in md
    assert md.count("![") == 3 and "(figures/curves.png)" in md
    assert page.count('src="data:image/png;base64,') == 3


def test_html_is_self_contained_and_links_resolve(reports):
    for page in (reports / "index.html", reports / "s1_demo" / "report.html", reports / "s2_other" / "report.html"):
        assert_links_resolve(page)
    index = (reports / "index.html").read_text()
    assert 'href="s1_demo/report.html"' in index and 'href="s2_other/report.html"' in index
    md = (reports / "index.md").read_text()
    assert "(s1_demo/report.md)" in md and "deeper-more-separable" in md


def test_reports_are_rebuilt_from_the_tables_alone(tmp_path):
    make_study().run(out=tmp_path, progress=False)
    shutil.rmtree(tmp_path / "s1_demo" / "runs")
    written = write_report(tmp_path)
    assert written["studies"]["s1_demo"]["html"].is_file()
    assert len(written["studies"]["s1_demo"]["figures"]) == 3
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_figure_that_cannot_be_drawn_is_reported_not_fatal(tmp_path):
    bad = FigureSpec(name="broken", table="final", kind="line", x="epoch", y="nope")
    result = make_study(extra_figures=[bad]).run(out=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="broken"):
        paths = write_study_report(result.out_dir)
    assert "could not be drawn" in paths["html"].read_text()
    assert (tmp_path / "index.html").is_file()


def test_render_figure_checks_its_input():
    t = pd.DataFrame({"epoch": [0, 1], "acc": [0.1, 0.2], "model": ["a", "a"]})
    with pytest.raises(ValueError, match=r"lacks columns \['loss'\]"):
        render_figure(FigureSpec(name="f", table="t", kind="line", x="epoch", y="loss"), t)
    with pytest.raises(ValueError, match="no rows left"):
        render_figure(FigureSpec(name="f", table="t", kind="line", x="epoch", y="acc", where={"model": "b"}), t)
    with pytest.raises(TypeError, match="table: expected a pandas DataFrame"):
        render_figure(FigureSpec(name="f", table="t", kind="line", x="epoch", y="acc"), t.to_dict())
    with pytest.raises(ValueError, match="kind"):
        FigureSpec(name="f", table="t", kind="pie", x="a", y="b")
    with pytest.raises(ValueError, match="value"):
        FigureSpec(name="f", table="t", kind="heatmap", x="a", y="b")
    with pytest.raises(ValueError, match="name"):
        FigureSpec(name="a/b", table="t", kind="line", x="a", y="b")
    spec = FigureSpec(name="f", table="t", kind="box", x="model", y="acc", where={"model": ["a"]})
    assert FigureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert render_figure(spec, t)[:4] == b"\x89PNG"


def test_write_report_bad_directories(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "missing")
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(NotADirectoryError, match="got a file"):
        write_report(f)
    with pytest.raises(FileNotFoundError, match="found none"):
        write_report(tmp_path)
    with pytest.raises(FileNotFoundError, match="study.json"):
        write_study_report(tmp_path)
    assert "No study results yet" in write_index(tmp_path)["html"].read_text()


# --------------------------------------------------------------------------------------------
# headless Chromium


_CHECK = """<script>
window.addEventListener('load', function () {
  var out = document.createElement('pre'); out.id = 'imgcheck';
  var imgs = Array.prototype.slice.call(document.images);
  out.textContent = JSON.stringify(imgs.map(function (i) { return [i.complete, i.naturalWidth, i.naturalHeight]; }));
  document.body.appendChild(out);
});
</script>"""


def _chromium(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (Debian package 'chromium')")
def test_html_report_renders_in_headless_chromium(reports, tmp_path):
    page = reports / "s1_demo" / "report.html"
    probe = page.with_name("report.chromium-check.html")
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    try:
        dom = _chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path)
    finally:
        probe.unlink()
    m = re.search(r'<pre id="imgcheck">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"chromium did not run the page: {dom.stderr[-2000:]}"
    images = json.loads(m.group(1).replace("&quot;", '"'))
    assert len(images) == 3
    assert all(done and w > 100 and h > 100 for done, w, h in images), images
    assert "deeper-more-separable" in dom.stdout

    shot = tmp_path / "index.png"
    _chromium(["--window-size=1200,900", f"--screenshot={shot}", (reports / "index.html").as_uri()], tmp_path)
    assert shot.is_file() and shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 5000


def test_report_functions_name_a_path_that_is_not_one():
    from sepmeasure.report import find_studies, write_index, write_study_report

    for fn, name in ((find_studies, "out_dir"), (write_index, "out_dir"), (write_study_report, "study_dir")):
        with pytest.raises(TypeError, match=f"{name}: expected a directory path, got"):
            fn(42)


def test_figures_are_palette_pngs_close_to_the_full_colour_drawing():
    """render_figure stores an 8-bit palette PNG; against the full-colour drawing of the same
    figure (matplotlib's own savefig), almost every pixel keeps its colour, fewer than 1% move by
    more than 16 of 255 levels (anti-aliased edges), and the file is smaller."""
    import io

    import matplotlib
    import numpy as np
    from PIL import Image

    from sepmeasure.report import palette_png

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(4, 3))
    for k in range(4):
        ax.plot(np.cumsum(rng.normal(size=50)), label=f"series {k}")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    full = buf.getvalue()
    small = palette_png(full)
    a = np.asarray(Image.open(io.BytesIO(full)).convert("RGB"), dtype=int)
    b = np.asarray(Image.open(io.BytesIO(small)).convert("RGB"), dtype=int)
    assert Image.open(io.BytesIO(small)).mode == "P"
    assert a.shape == b.shape
    off = np.abs(a - b).max(axis=2)           # largest channel error per pixel, in 0..255 levels
    assert off.mean() < 1.0                   # almost every pixel exact
    assert (off > 16).mean() < 0.01           # larger steps only on a few anti-aliased edge pixels
    assert len(small) < len(full)
    with pytest.raises(TypeError, match="png: expected the bytes"):
        palette_png("figure.png")
    with pytest.raises(ValueError, match="colors: expected an int <= 256"):
        palette_png(full, colors=300)
