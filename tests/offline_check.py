"""作った本を、ネットワークなしの headless Chromium で開いて確かめます（テストのコマンドには含めません）。

    python tests/offline_check.py [_build/html] [--shots DIR]

ページごとに: 数式（``class="math"`` の要素）がすべて MathJax で組まれたか（``mjx-container``）、
保存したウィジェットがすべて表示されたか、ページがネットワークへ出ようとしなかったか（Chromium の
net-log に残る http(s) の URL。Chromium 自身の更新確認などの Google のサービスは除きます）。
``--shots`` を付けると、各ページの先頭の画面写真も保存します。Chromium（``chromium`` か
``google-chrome``）と日本語フォント（Debian/Ubuntu なら ``fonts-noto-cjk``）が必要です。
"""
import argparse
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Chromium が自分で出す通信（ページとは無関係）
BROWSER_SERVICES = re.compile(r"^https?://([\w.-]+\.)?(google\.com|googleapis\.com|gvt1\.com|gstatic\.com)/")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-translate", "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=15000", "--window-size=1280,1400",
]


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    sys.exit("Chromium が見つかりません（apt-get install chromium fonts-noto-cjk）")


def check_page(chrome, page, shots=None):
    """1 ページを開いて、(数式の数, 組まれた数式, ウィジェット, 表示されたウィジェット, 外への URL) を返します。"""
    html = page.read_text(encoding="utf-8")
    n_math = len(re.findall(r'class="math[ "]', html))
    n_views = html.count('type="application/vnd.jupyter.widget-view+json"')
    with tempfile.TemporaryDirectory() as tmp:
        netlog = pathlib.Path(tmp) / "net.json"
        cmd = [chrome, *FLAGS, f"--log-net-log={netlog}", "--dump-dom", page.as_uri()]
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=180).stdout
        urls = set(re.findall(r'"url":"(https?://[^"]+)"', netlog.read_text(errors="replace")))
        if shots:
            out = pathlib.Path(shots) / f"{page.stem}.png"
            subprocess.run([chrome, *FLAGS, f"--screenshot={out}", page.as_uri()],
                           capture_output=True, timeout=180)
    n_typeset = dom.count("<mjx-container") - dom.count("<mjx-merror")  # TeX のエラーは組めていない
    n_shown = len(re.findall(r'class="[^"]*jupyter-widgets widget-container widget-box', dom))
    if "Error displaying widget" in dom:
        n_shown = -1
    outside = sorted(u for u in urls if not BROWSER_SERVICES.match(u))
    return n_math, n_typeset, n_views, n_shown, outside


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", default=str(ROOT / "_build" / "html"))
    parser.add_argument("--shots", help="画面写真を保存するフォルダ")
    args = parser.parse_args(argv)
    chrome = find_chromium()
    if args.shots:
        pathlib.Path(args.shots).mkdir(parents=True, exist_ok=True)
    pages = sorted(pathlib.Path(args.html, "book").glob("*.html"))
    if not pages:
        sys.exit(f"{args.html}/book/ にページがありません。先に本を作ってください")
    ok = True
    for page in pages:
        n_math, n_typeset, n_views, n_shown, outside = check_page(chrome, page, args.shots)
        good = n_typeset == n_math and n_shown >= n_views and not outside
        ok &= good
        print(f"{'OK ' if good else 'NG '} {page.name}: 数式 {n_typeset}/{n_math}、"
              f"ウィジェット {n_shown}/{n_views}、外への通信 {len(outside)}")
        for url in outside:
            print(f"      {url}")
    print("すべてオフラインで表示できました" if ok else "表示できないものがあります")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
