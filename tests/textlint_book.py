"""本の文章を textlint（preset-ja-technical-writing）で調べます。

    npm ci                                        # 初回だけ（package.json の textlint とルールを node_modules/ に）
    python tests/textlint_book.py                 # _toc.yml の全ページ
    python tests/textlint_book.py book/ch02_differentiation.ipynb book/glossary.md
    python tests/textlint_book.py --summary       # ページごとの件数だけ

ノートブックはマークダウンのセルだけを取り出し、1 ページ 1 つの一時的な .md にして textlint に
渡します。指摘はノートブックのセルの番号（0 から）とセルの中の行で示します。
README のテストのコマンドには含めません（node が要るため。CI では .github/workflows/textlint.yml）。

textlint に渡す前に、数式を次のように置き換えます（行の数は変えません）。

- ``$$`` だけの行で囲んだ別行立ての数式は、コードブロック（```）にします。textlint はコードブロックを
  読みません。数式の直前の段落が句点なしで終わっていたら（「…の位置は」）、文は数式で終わるとみなし、
  その段落の末尾に「。」を足してから調べます。
- 文中の ``$...$`` は、インラインコード `` `M` `` にします。文の長さには 1 語として数え、
  TeX のソースは数えません。「$a$ と $b$ の和」のような文の形（助詞の並び）は残ります。

インラインコード・コードブロック・URL は、もともと textlint の規則が読みません。
設定（.textlintrc.json）の理由:

- sentence-length: 100 文字まで（数式の外）。URL だけのリンクと、参考文献の『書名』・"論文名" は数えません。
- max-ten: 読点は 1 文に 3 つまで（既定のまま）。max-comma（,）は、引数やタプルを書く本なので使いません。
- max-kanji-continuous-len: 漢字の連続は 6 文字まで（既定のまま）。「確率的勾配降下法」のような術語は allow に書きます。
- ja-no-mixed-period: 段落の文末は「。」。箇条書きの項目は句点なしでかまいません（規則の既定）。
  「次のとおりです:」のように表やコードの前で終わる段落のため、「:」「：」も文末として認めます。
- no-exclamation-question-mark: 「なぜでしょうか？」のような問いかけを本文で使うので、疑問符は認めます。
  感嘆符は使いません。
- no-mix-dearu-desumasu: 本文と箇条書きは「です・ます」。学習目標の「〜を説明できる」のような言い切りの項目は
  どちらにも数えられないので、そのまま書けます。見出しは混ざらなければどちらでも。
- ja-no-weak-phrase: 「〜かもしれない」のような弱い表現は使いません（既定のまま）。
- no-doubled-joshi: 1 文に同じ助詞が 2 回出たら指摘します。ただし並べる「も」「や」「か」「ても」（「A も B も」）は許します。
- ja-no-redundant-expression・ja-no-abusage・ja-unnatural-alphabet は既定のまま。
- arabic-kanji-numbers は既定のまま（数えられるものは算用数字）。

規則を 1 か所だけ外すときは、マークダウンのセルに
``<!-- textlint-disable 規則の名前 -->`` … ``<!-- textlint-enable 規則の名前 -->`` を書きます
（HTML のコメントは本には表示されません。textlint-filter-rule-comments）。
"""
import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from booktools import toc_pages  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent

# インラインコード（バッククォートの数をそろえて閉じる）か、$...$ の数式
_INLINE = re.compile(r"(`+)(?:.|\n)*?(?<!`)\1(?!`)|\$(?:\\.|[^$\\\n])+\$")


def mask_math(text):
    """数式を textlint が読まない形に置き換えます（行の数は変えません）。"""
    out = []
    in_math = in_code = False
    for line in text.split("\n"):
        stripped = line.strip()
        if not in_math and re.match(r"^(```|~~~)", stripped):
            in_code = not in_code
            out.append(line)
        elif in_code:
            out.append(line)
        elif stripped == "$$":
            if not in_math:  # 数式の前で文が続いている段落（「…の位置は」）は、数式で文が終わるとみなす
                prev = next((j for j in range(len(out) - 1, -1, -1) if out[j].strip()), None)
                if prev is not None and not re.search(r"[。．：:」）)]$|^\s*(```|~~~)", out[prev].rstrip()):
                    out[prev] = out[prev].rstrip() + "。"
            in_math = not in_math
            out.append("```")
        elif in_math:
            out.append(line)
        else:
            out.append(line)
    text = "\n".join(out)
    # 文中の $...$（コードブロックの中の行はそのまま）
    blocks = re.split(r"(^```.*?^```[^\n]*$)", text, flags=re.M | re.S)
    for i in range(0, len(blocks), 2):
        blocks[i] = _INLINE.sub(lambda m: m.group(0) if m.group(0).startswith("`") else "`M`", blocks[i])
    return "".join(blocks)


def page_markdown(path):
    """ページを 1 つのマークダウンにして、(文字列, [(セルの番号, 先頭の行), ...]) を返します。"""
    if path.suffix == ".md":
        return mask_math(path.read_text(encoding="utf-8")), [(None, 1)]
    nb = json.loads(path.read_text(encoding="utf-8"))
    parts, starts, line = [], [], 1
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        src = cell["source"]
        src = "".join(src) if isinstance(src, list) else src
        text = mask_math(src.rstrip("\n")) + "\n\n"
        starts.append((i, line))
        parts.append(text)
        line += text.count("\n")
    return "".join(parts), starts


def where(starts, line):
    cell, first = [s for s in starts if s[1] <= line][-1]
    return f"{line - first + 1} 行目" if cell is None else f"セル {cell}, {line - first + 1} 行目"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="*", type=pathlib.Path, help="ノートブックか .md（既定は _toc.yml の全ページ）")
    parser.add_argument("--summary", action="store_true", help="ページごとの件数だけを表示します")
    parser.add_argument("-v", "--verbose", action="store_true", help="指摘された行も表示します")
    args = parser.parse_args(argv)
    exe = ROOT / "node_modules" / ".bin" / "textlint"
    if not exe.exists():
        print("textlint がありません。リポジトリの直下で `npm ci` を実行してください。", file=sys.stderr)
        return 2
    pages = [p.resolve() for p in args.pages] or toc_pages()
    total = 0
    with tempfile.TemporaryDirectory(prefix="textlint_book_") as tmp:
        tmp = pathlib.Path(tmp)
        mapping = {}
        for p in pages:
            text, starts = page_markdown(p)
            md = tmp / f"{p.stem}.md"
            md.write_text(text, encoding="utf-8")
            mapping[str(md)] = (p, starts, text.split("\n"))
        proc = subprocess.run([str(exe), "--config", str(ROOT / ".textlintrc.json"), "--format", "json",
                               *mapping], capture_output=True, text=True, cwd=ROOT)
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            print(proc.stdout + proc.stderr, file=sys.stderr)
            return 2
        results = {r["filePath"]: r["messages"] for r in json.loads(proc.stdout)}
        for md, (page, starts, lines) in mapping.items():
            messages = results.get(md, [])
            total += len(messages)
            rel = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
            if args.summary:
                print(f"{len(messages):5d}  {rel}")
                continue
            for m in messages:
                rule = m["ruleId"].removeprefix("ja-technical-writing/")
                print(f"{rel}: {where(starts, m['line'])}: {m['message'].splitlines()[0]} ({rule})")
                if args.verbose:
                    print("    " + lines[m["line"] - 1].strip())
    print(f"textlint: {total} 件" if total else "textlint: 指摘はありません")
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
