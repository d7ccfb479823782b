"""Render the report's Markdown to one self-contained HTML page (images embedded as base64, no external files).

Covers exactly the subset report.py emits, so no Markdown library is needed: ATX headings, paragraphs,
`- ` lists, pipe tables, a line that is only an image `![alt](path)`, and inline `code`, **bold** and *italic*.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)$")
HEADING = re.compile(r"^(#{1,6}) (.*)$")
INLINE = re.compile(r"`([^`]+)`|\*\*(.+?)\*\*|\*(.+?)\*")
VERDICT_CLASS = {"PASS": "pass", "FAIL": "fail", "INCONCLUSIVE": "inconclusive"}
MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}
CSS = """
body { font-family: system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { line-height: 1.2; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .85em; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } code { background: #f3f3f3; padding: 0 .2em; border-radius: 3px; }
img { max-width: 100%; border: 1px solid #eee; }
.pass { color: #fff; background: #2a7d2a; padding: 0 .3em; border-radius: 3px; }
.fail { color: #fff; background: #b22222; padding: 0 .3em; border-radius: 3px; }
.inconclusive { color: #000; background: #e0c020; padding: 0 .3em; border-radius: 3px; }
"""


def inline(text: str) -> str:
    """Escape HTML, then turn `code`, **bold** and *italic* into tags (code content is left verbatim)."""
    out, pos = [], 0
    for m in INLINE.finditer(text):
        out.append(html.escape(text[pos:m.start()]))
        code, bold, em = m.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            cls = VERDICT_CLASS.get(bold)
            out.append(f'<strong class="{cls}">{inline(bold)}</strong>' if cls else f"<strong>{inline(bold)}</strong>")
        else:
            out.append(f"<em>{inline(em)}</em>")
        pos = m.end()
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def _image(alt: str, src: str, base: Path) -> str:
    path = (base / src).resolve()
    if not path.is_file():
        return f"<p><em>[missing image: {html.escape(src)}]</em></p>"
    data = base64.b64encode(path.read_bytes()).decode()
    mime = MIME.get(path.suffix.lower(), "application/octet-stream")
    return f'<p><img alt="{html.escape(alt)}" src="data:{mime};base64,{data}"></p>'


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def markdown_to_html(md: str, base: str | Path, title: str = "report") -> str:
    """The HTML page of `md`; image paths are read relative to `base` and embedded."""
    base = Path(base)
    lines, body, i = md.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := HEADING.match(line):
            level, text = len(m.group(1)), m.group(2)
            body.append(f'<h{level} id="{_slug(text)}">{inline(text)}</h{level}>')
            i += 1
        elif m := IMAGE.match(line.strip()):
            body.append(_image(m.group("alt"), m.group("src"), base))
            i += 1
        elif line.startswith("|") and i + 1 < len(lines) and re.match(r"^\|(\s*:?-+:?\s*\|)+\s*$", lines[i + 1]):
            rows = [f"<tr>{''.join(f'<th>{inline(c)}</th>' for c in _cells(line))}</tr>"]
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(f"<tr>{''.join(f'<td>{inline(c)}</td>' for c in _cells(lines[i]))}</tr>")
                i += 1
            body.append("<table>\n" + "\n".join(rows) + "\n</table>")
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para, i = [line.strip()], i + 1
            while (i < len(lines) and lines[i].strip() and not HEADING.match(lines[i])
                   and not lines[i].startswith(("|", "- ")) and not IMAGE.match(lines[i].strip())):
                para.append(lines[i].strip())
                i += 1
            body.append(f"<p>{inline(' '.join(para))}</p>")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def render_report(md_path: str | Path, html_path: str | Path) -> Path:
    """Render the Markdown file at md_path to a self-contained HTML file (written atomically)."""
    from hybridlab.io import write_bytes

    md_path, html_path = Path(md_path), Path(html_path)
    text = md_path.read_text()
    first = next((ln[2:] for ln in text.splitlines() if ln.startswith("# ")), md_path.stem)
    write_bytes(html_path, markdown_to_html(text, md_path.parent, title=first).encode())
    return html_path
