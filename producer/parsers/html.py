"""HTML through lxml (libxml2's HTML parser): the main text, `h1`–`h6` for the section path.

Scripts, styles, navigation, page headers and footers, forms and hidden elements are dropped;
when the page marks its main content (`<main>`, `role="main"`, a single `<article>`), only that
is read. Block elements become paragraphs, tables rows of `cell | cell`.
"""

import codecs
import re

import lxml.etree
import lxml.html

from producer.parsers.base import Headings, ParsedDocument, ParseError, Parser, TextBuilder

_DROP_TAGS = {
    "script", "style", "noscript", "template", "svg", "math", "iframe", "object", "embed", "canvas",
    "nav", "aside", "form", "button", "select", "textarea", "input", "dialog", "head", "menu",
}  # fmt: skip
_CHROME_ROLES = {"navigation", "banner", "contentinfo", "search", "menu", "menubar", "complementary", "dialog"}
_BLOCK_TAGS = {
    "p", "div", "section", "article", "main", "li", "ul", "ol", "dl", "dt", "dd", "blockquote", "pre",
    "figure", "figcaption", "address", "details", "summary", "hr", "br", "header", "footer", "caption",
    "fieldset", "center",
}  # fmt: skip
_HEADINGS = {f"h{level}": level for level in range(1, 7)}
_MAX_UNREAD_LINES = 200
_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([\w\-:.]+)""", re.IGNORECASE)
_BOMS = ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


class HtmlParser(Parser):
    suffixes = (".html", ".htm")
    heavy = True

    def convert(self, data: bytes) -> ParsedDocument:
        if not data.strip():
            raise ParseError("empty HTML file")
        # huge_tree: no cut at 256 levels or 10 MB of text; what libxml2 still cannot read whole
        # (deeper than 2,048 levels) is refused, never silently truncated.
        parser = lxml.html.HTMLParser(
            encoding=sniff_encoding(data), remove_comments=False, remove_pis=True, huge_tree=True
        )
        try:
            root = lxml.html.document_fromstring(data, parser=parser)
        except (lxml.etree.ParserError, ValueError) as err:
            raise ParseError(f"HTML cannot be parsed ({err})") from err
        cut = next((error for error in parser.error_log if error.type_name == "ERR_RESOURCE_LIMIT"), None)
        if cut is not None:
            limit = cut.message.split(", use XML_PARSE_HUGE")[0]
            raise ParseError(f"HTML cannot be read whole ({limit}, line {cut.line}): nothing of it was kept")
        title = " ".join(root.findtext(".//title", "").split())
        head = unread_lines(root)
        head += _drop_chrome(root)[: _MAX_UNREAD_LINES - len(head)]
        walker = _Walker()
        walker.read(_main_content(root))
        parsed = walker.builder.build({"title": title} if title else {})
        parsed.head = head
        return parsed


def unread_lines(root) -> list[tuple[int, str]]:
    """What a page says outside its text, numbered by source line: `<meta name content>` as
    `name: content` and the lines of its comments (read for level claims); comments are removed."""
    lines: list[tuple[int, str]] = []
    for element in root.iter(lxml.etree.Comment, "meta"):
        if len(lines) >= _MAX_UNREAD_LINES:
            break
        if element.tag == "meta" and element.get("name") and element.get("content") is not None:
            lines.append((element.sourceline or 0, f"{element.get('name')}: {element.get('content')}"[:1000]))
        elif element.tag is lxml.etree.Comment:
            first = element.sourceline or 0
            lines += [(first + n, line[:1000]) for n, line in enumerate((element.text or "").split("\n")[:20])]
    for comment in list(root.iter(lxml.etree.Comment)):
        comment.drop_tree()
    return lines[:_MAX_UNREAD_LINES]


def sniff_encoding(data: bytes) -> str:
    """A byte-order mark, else a `<meta charset>` near the top, else UTF-8 if it decodes, else cp1252."""
    for bom, name in _BOMS:
        if data.startswith(bom):
            return name
    declared = _META_CHARSET.search(data[:4096])
    if declared:
        try:
            return codecs.lookup(declared.group(1).decode("ascii")).name
        except LookupError:
            pass
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


def _is_chrome(element) -> bool:
    if element.tag in _DROP_TAGS:
        return True
    if element.get("hidden") is not None or element.get("aria-hidden") == "true":
        return True
    if (element.get("role") or "").lower() in _CHROME_ROLES:
        return True
    style = (element.get("style") or "").replace(" ", "").lower()
    if "display:none" in style or "visibility:hidden" in style:
        return True
    # A page's own header and footer are chrome; an article's header holds its title.
    return element.tag in ("header", "footer") and not any(
        ancestor.tag in ("article", "main") for ancestor in element.iterancestors()
    )


def _drop_chrome(root) -> list[tuple[int, str]]:
    """Drop what is not the page's text; returns the lines of its page header and footer, which
    are not text but are read for what they say of the page's level."""
    furniture: list[tuple[int, str]] = []
    for element in [el for el in root.iter() if isinstance(el.tag, str) and _is_chrome(el)]:
        if element.getparent() is None:
            continue  # inside chrome dropped already
        if element.tag in ("header", "footer") or (element.get("role") or "").lower() in ("banner", "contentinfo"):
            lines = [line.strip()[:1000] for line in element.text_content().splitlines()[:_MAX_UNREAD_LINES]]
            furniture += [(element.sourceline or 0, line) for line in lines if line]
        element.drop_tree()
    return furniture


def _main_content(root):
    for query in ("//main", "//*[@role='main']", "//article"):
        found = root.xpath(query)
        if len(found) == 1:
            return found[0]
    body = root.find("body")
    return body if body is not None else root


class _Walker:
    """Collects inline text into the current paragraph; block elements and headings end it."""

    def __init__(self) -> None:
        self.builder = TextBuilder()
        self.headings = Headings()
        self._inline: list[str] = []

    def read(self, root) -> None:
        """The text inside `root` (not the text after it, which belongs to its parent), in
        document order; iterative, since a page may nest thousands of elements deep."""
        if root.text:
            self._inline.append(root.text)
        stack: list[tuple[object, bool]] = [(child, False) for child in reversed(root)]
        while stack:
            element, closing = stack.pop()
            if closing:  # after its children: the end of a block, then the text after it
                if element.tag in _BLOCK_TAGS:
                    self._flush()
                self._tail(element)
            elif self._enter(element):
                stack.append((element, True))
                stack.extend((child, False) for child in reversed(element))
            else:
                self._tail(element)
        self._flush()

    def _enter(self, element) -> bool:
        """Take in `element`'s own text; True when its children are to be read (then its end
        is handled as a block's where it is one), False when it was read whole."""
        tag = element.tag if isinstance(element.tag, str) else ""
        if tag in _HEADINGS:
            self._flush()
            title = element.text_content()
            self.headings.enter(_HEADINGS[tag], title)
            self.builder.add(" ".join(title.split()), section=self.headings.path)
        elif tag == "table":
            self._flush()
            self.builder.add("\n".join(_table_rows(element)), section=self.headings.path)
        elif tag == "pre":
            self._flush()
            self.builder.add(element.text_content(), section=self.headings.path)
        else:
            if tag in _BLOCK_TAGS:
                self._flush()
            if element.text:
                self._inline.append(element.text)
            return True
        return False

    def _tail(self, element) -> None:
        if element.tail:
            self._inline.append(element.tail)

    def _flush(self) -> None:
        if not self._inline:
            return
        text = " ".join("".join(self._inline).split())
        self._inline = []
        self.builder.add(text, section=self.headings.path)


def _table_rows(table) -> list[str]:
    rows = []
    for row in table.iter("tr"):
        cells = [" ".join(cell.text_content().split()) for cell in row if cell.tag in ("td", "th")]
        if any(cells):
            rows.append(" | ".join(cells))
    return rows
