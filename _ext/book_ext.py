"""本の HTML をオフラインでも読みやすくする、小さな Sphinx 拡張（``_config.yml`` の ``local_extensions``）。

1. 日本語の全文検索: 索引も検索語も、かなと漢字の並びを 2 文字ずつ（bi-gram）に区切ります。
   Sphinx の既定の分割（TinySegmenter）は同じ語を文によって「逆伝播」とも「逆伝|播」とも区切り、
   ブラウザの検索語は区切らないので、語を含むのに見つからないページがありました。2 文字ずつなら、
   語を含むページには語の 2 文字の組がすべて入るので、見落としがありません。英数字の語は従来どおり
   1 語ずつです。Python の ``split`` と、ブラウザで動く ``splitQuery``（``JS_SPLITTER``）は、
   同じ文字の範囲 ``CJK`` から作るので、区切り方が一致します。
2. 読める節のアンカー: MyST の ``heading_anchors`` が見出しから作るスラッグ（日本語のまま）を、
   節の HTML の ``id`` の先頭に置きます（``#id2`` ではなく ``#逆伝播の仕組み``）。
   古い ``id`` も残すので、以前のリンクも飛べます。
"""
import re
import unicodedata

from docutils import nodes
from sphinx.search.ja import SearchJapanese
from sphinx.transforms import SphinxTransform

# かな・漢字（索引で 2 文字ずつに区切る文字）。「・」（U+30FB）は区切り記号なので含めません。
CJK = (
    "\u3005-\u3007"  # 々〆〇
    "\u3041-\u309f"  # ひらがな
    "\u30a1-\u30fa\u30fc-\u30ff"  # カタカナ（ー を含む）
    "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # 漢字
    "\uff66-\uff9f"  # 半角カタカナ
)
_TOKEN = re.compile(rf"[{CJK}]+|(?:(?![{CJK}])\w)+")
_CJK_RUN = re.compile(rf"[{CJK}]+")


def query_terms(text):
    """ブラウザの ``splitQuery`` と同じ区切り方（検索語の側）: かな・漢字は 2 文字ずつ、それ以外は語ごと。"""
    terms = []
    for word in _TOKEN.findall(text):
        if _CJK_RUN.fullmatch(word) and len(word) > 1:
            terms.extend(word[i:i + 2] for i in range(len(word) - 1))
        else:
            terms.append(word)
    return terms


def index_terms(text):
    """索引の側: 検索語の区切り方に、かな・漢字の 1 文字ずつを加えます（1 文字の検索語のため）。"""
    terms = query_terms(text)
    for run in _CJK_RUN.findall(text):
        if len(run) > 1:
            terms.extend(run)
    return terms


# language_data.js に入る、ブラウザ側の検索語の区切り方（query_terms と同じ規則）
JS_SPLITTER = r"""
var splitQuery = (function () {
  var cjk = "%s";
  var token = new RegExp("[" + cjk + "]+|(?:(?![" + cjk + "])[\\p{L}\\p{N}_])+", "gu");
  var cjkRun = new RegExp("^[" + cjk + "]+$", "u");
  return function (query) {
    var terms = [];
    (query.match(token) || []).forEach(function (word) {
      if (cjkRun.test(word) && word.length > 1) {
        for (var i = 0; i + 1 < word.length; i++) terms.push(word.slice(i, i + 2));
      } else {
        terms.push(word);
      }
    });
    return terms;
  };
})();
""" % CJK.encode("unicode_escape").decode("ascii")


def slugify(title):
    """見出しのスラッグ（``myst_heading_slug_func``）: 日本語はそのまま、記号と空白は ``-`` に、英字は小文字に。

    先頭の節番号は付けません（``4.1 つながりを記録する`` は ``つながりを記録する``）。節の番号が
    変わっても、アンカーは変わりません。同じページに同じスラッグがあれば ``-1``、``-2`` が付きます。
    """
    title = re.sub(r"^\s*\d+(\.\d+)+\s+", "", unicodedata.normalize("NFKC", title))
    slug = re.sub(r"\W+", "-", title.lower()).strip("-")
    return slug or "section"


class SearchJapaneseBigram(SearchJapanese):
    """日本語の検索（索引も検索語も、かな・漢字を 2 文字ずつに区切る）。"""

    js_splitter_code = JS_SPLITTER

    def init(self, options):
        pass  # 既定の TinySegmenter は使いません

    def split(self, input):
        return index_terms(input)

    def word_filter(self, stemmed_word):
        return len(stemmed_word) > 1 or bool(_CJK_RUN.fullmatch(stemmed_word))


class ReadableSectionIds(SphinxTransform):
    """MyST が見出しから作ったスラッグを、節の HTML の ``id`` の先頭に置きます。"""

    default_priority = 100  # MyST の #スラッグ への参照を解決する変換（879）より前

    def apply(self, **kwargs):
        slugs = getattr(self.document, "myst_slugs", {})
        for section in self.document.findall(nodes.section):
            slug = section.get("slug")
            if not slug:
                continue
            new_id, i = slug, 0
            while self.document.ids.get(new_id, section) is not section:  # 別の節の ASCII の id と重なる
                i += 1
                new_id = f"{slug}-{i}"
            if new_id in section["ids"]:
                section["ids"].remove(new_id)
            section["ids"].insert(0, new_id)
            self.document.ids[new_id] = section
            if slug in slugs:
                line, _old_id, text = slugs[slug]
                slugs[slug] = (line, new_id, text)


def setup(app):
    app.add_search_language(SearchJapaneseBigram)
    app.add_transform(ReadableSectionIds)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
