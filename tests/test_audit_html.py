"""report.html: one self-contained page that headless Chromium renders with its plots, tables and gallery."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch

import gauntlet as gt
from gauntlet.attacks import create
from gauntlet.audit.flags import compute_flags
from gauntlet.audit.html import render_html
from gauntlet.audit.records import AuditOutcome
from gauntlet.audit.report import build_report
from gauntlet.audit.studies.evasion import UnitRecord, sections_of

pytestmark = pytest.mark.usefixtures("one_thread_module")

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium not found: install the Debian package (apt-get install -y chromium) to run the render test",
)
HOSTILE = "<script>alert('x')</script> & \"quotes\""
# Chromium's own background pings (component updater, sign-in) are not requests made by the page.
BROWSER_HOSTS = ("google.com", "googleapis.com", "gstatic.com", "gvt1.com", "googleusercontent.com")


@pytest.fixture(scope="module")
def report(digits_net, digits_test) -> dict:
    """A report from a small real audit: fgsm + pgd in L∞ and L2, two batches each, flags and a gallery."""
    model = gt.models.TorchModel(digits_net, bounds=(0.0, 1.0), num_classes=10, input_shape=(1, 8, 8))
    x, y = digits_test.x[:32], digits_test.y[:32]
    units = []
    threats = [("linf", (0.05, 0.1, 0.2)), ("l2", (0.5, 1.0, 2.0))]
    for name, params in [("fgsm", {}), ("pgd", {"steps": 5})]:
        for norm, eps in threats:
            for start in (0, 16):
                xb, yb = x[start:start + 16], y[start:start + 16]
                r = create(name, norm=norm, eps=list(eps), **params).run(model, xb, yb, seed=start)
                units.append(UnitRecord(name, name, params, norm, eps, start, start + 16, r.success.tolist(),
                                        r.norms.tolist(), r.queries, r.grad_evals, r.seconds))
    clean = (model.predict(x) == y).tolist()
    flags = compute_flags(model, x, y, units, clean)
    flags.append({"id": "non_monotonic_eps", "severity": "warning", "title": "Robust accuracy rises as ε grows",
                  "explanation": f"Crafted for the render test: {HOSTILE}. What to do: nothing.",
                  "evidence": {"cases": [{"attack": "pgd", "eps_low": 0.1, "eps_high": 0.2}], "share": 0.25}})
    adv = create("pgd", norm="linf", eps=0.2, steps=5).run(model, x[:4], y[:4], seed=0)
    pred_clean, pred_adv = model.predict(x[:4]), model.predict(adv.x_adv)
    gallery = [
        {"index": i, "label": int(y[i]), "pred_clean": int(pred_clean[i]), "pred_adv": int(pred_adv[i]),
         "attack": "pgd", "eps": 0.2, "x": x[i].tolist(), "x_adv": adv.x_adv[i].tolist()}
        for i in range(4)
    ]
    outcome = AuditOutcome(
        spec={"model": {"path": "model.pt"}, "attacks": ["fgsm", {"name": "pgd", "steps": 10}]},
        model_info={"name": "digits-cnn", "version": "3", "sha256": "ab" * 32, "path": "model.pt",
                    "capabilities": ["gradients", "scores", "labels"], "num_classes": 10, "bounds": [0.0, 1.0]},
        data_info={"name": "digits", "n": 32, "sha256": "cd" * 32, "shape": [1, 8, 8]},
        clean_correct=clean, sections={**sections_of(units, clean), "gallery": gallery}, flags=flags,
        manifest={"command": "gauntlet audit spec.yaml --out report", "seed": 0, "python": "3.11",
                  "packages": {"torch": torch.__version__, "gauntlet": gt.__version__}, "note": HOSTILE},
        store_audit_id=3,
    )
    return build_report(outcome, gate={"passed": False, "violations": ["pgd:linf:0.1 robust accuracy 52.1% < 60.0%"]})


@pytest.fixture(scope="module")
def page(report, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("html") / "report.html"
    path.write_text(render_html(report), encoding="utf-8")
    return path


class Elements(HTMLParser):
    """Collects (tag, attributes) of every element."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str]]] = []

    def handle_starttag(self, tag, attrs):  # type: ignore[no-untyped-def]
        self.elements.append((tag, {k: v or "" for k, v in attrs}))

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str]]:
        return [a for t, a in self.elements if t == tag and (cls is None or cls in a.get("class", "").split())]


def parse(text: str) -> Elements:
    p = Elements()
    p.feed(text)
    return p


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=True)


def test_page_is_self_contained_with_no_outside_reference(page):
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    els = parse(text)
    refs = [a[k] for _, a in els.elements for k in ("src", "href") if k in a]
    assert refs and all(r.startswith("data:image/png;base64,") for r in refs)
    csp = [a for a in els.find("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and csp[0]["content"].startswith("default-src 'none'")


def test_user_strings_are_escaped(page):
    text = page.read_text(encoding="utf-8")
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quotes&quot;" in text


def test_embedded_images_are_valid_pngs(page, report):
    pil = pytest.importorskip("PIL.Image")
    els = parse(page.read_text(encoding="utf-8"))
    plots, gal = els.find("img", "plot"), els.find("img", "gal")
    assert len(plots) == 2 and len(gal) == 3 * len(report["gallery"])
    for a in plots + gal:
        img = pil.open(io.BytesIO(base64.b64decode(a["src"].split(",", 1)[1])))
        img.load()
        assert min(img.size) >= 96
    # the amplified perturbation of a PGD L∞ example uses the full range: black and white both present
    amp = pil.open(io.BytesIO(base64.b64decode(gal[2]["src"].split(",", 1)[1]))).convert("L")
    assert amp.getextrema() == (0, 255)


@needs_chromium
def test_chromium_renders_plots_tables_flags_gallery_and_manifest(page, report, tmp_path):
    dom = chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    els = parse(dom)
    assert {a["data-norm"] for a in els.find("img", "plot")} == {"linf", "l2"}
    assert len(els.find("tr", "result")) == len(report["results"]) == 12
    assert len(els.find("tr", "worst")) == len(report["worst_case"]) == 6
    assert len(els.find("tr", "cost")) == 2
    assert len(els.find("img", "gal")) == 12
    assert len(els.find("div", "flag")) == len(report["flags"]) == 1
    assert els.find("pre", "manifest") and "gauntlet audit spec.yaml --out report" in dom
    assert "FAILED" in dom and "pgd:linf:0.1 robust accuracy 52.1% &lt; 60.0%" in dom
    assert not els.find("script")


@needs_chromium
def test_chromium_screenshot_is_not_blank(page, tmp_path):
    pil = pytest.importorskip("PIL.Image")
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1280,1800", f"--screenshot={shot}", page.as_uri())
    if keep := os.environ.get("GAUNTLET_KEEP_SCREENSHOT"):  # to look at the page yourself
        shutil.copy(shot, keep)
    img = pil.open(shot).convert("L")
    assert img.size == (1280, 1800)
    hist = img.histogram()
    n = sum(hist)
    mean = sum(v * c for v, c in enumerate(hist)) / n
    variance = sum((v - mean) ** 2 * c for v, c in enumerate(hist)) / n
    assert variance > 200, f"screenshot looks blank (pixel variance {variance:.1f})"
    assert sum(1 for c in hist if c) > 64  # text, plot lines and images, not a flat fill


def _page_requests(netlog: Path) -> set[str]:
    urls = set(re.findall(r'"url":"([^"]+)"', netlog.read_text(encoding="utf-8", errors="replace")))
    return {u for u in urls if not (urlparse(u).hostname or "").endswith(BROWSER_HOSTS)}


@needs_chromium
def test_rendering_requests_nothing_from_the_network(page, tmp_path):
    netlog = tmp_path / "net.json"
    chromium(tmp_path, f"--log-net-log={netlog}", "--dump-dom", page.as_uri())
    assert _page_requests(netlog) == set()
    # the detector itself works: a page with an outside image and no CSP is caught
    leaky = tmp_path / "leaky.html"
    leaky.write_text("<!DOCTYPE html><img src='http://127.0.0.1:9/leak.png'>", encoding="utf-8")
    chromium(tmp_path, f"--log-net-log={netlog}", "--dump-dom", leaky.as_uri())
    assert _page_requests(netlog) == {"http://127.0.0.1:9/leak.png"}


def test_report_without_results_or_gallery_still_renders():
    rep = {"schema_version": "1.0", "model": {"name": None}, "data": {}, "clean_accuracy": None, "results": [],
           "worst_case": [], "cost": [], "flags": [], "gate": {"passed": None, "violations": []}, "gallery": [], "manifest": {}}
    text = render_html(rep)
    assert "No results to plot." in text and "NO GATE CONFIGURED" in text and "No hygiene flag raised." in text
    assert "id='gallery'" not in text


def test_gallery_shows_rgb_images_and_skips_non_image_data(report):
    rep = json.loads(json.dumps(report))
    rgb = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    rep["gallery"] = [
        {"index": 0, "label": 1, "pred_clean": 1, "pred_adv": 2, "attack": "pgd", "eps": 0.1,
         "x": rgb.tolist(), "x_adv": (rgb * 0.9).tolist()},
        {"index": 1, "label": 1, "pred_clean": 1, "pred_adv": 2, "attack": "pgd", "eps": 0.1,
         "x": [0.1] * 20, "x_adv": [0.2] * 20},  # tabular: no picture
    ]
    els = parse(render_html(rep))
    assert len(els.find("img", "gal")) == 3
