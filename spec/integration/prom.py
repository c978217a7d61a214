"""A small, strict parser for the Prometheus text exposition format 0.0.4,
as far as discluster writes it, and a curl-based scraper. Independent of
the project's code: the tests parse what the binaries serve.

Rules enforced (a ValueError names the line):
- every line is `# HELP name text`, `# TYPE name counter|gauge` or a sample
  `name{label="value",...} value` (no timestamps, no other comments);
- a family's HELP and TYPE come once each, before its samples, and its
  samples are contiguous (no other family in between);
- counters end in `_total`; names and label names are valid identifiers;
- label values use only the escapes \\\\, \\" and \\n; no duplicate series;
- values are numbers (Go float syntax as Prometheus reads it);
- the page ends with a newline.
"""
import re
import subprocess

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
VALUE = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\Z|[+-]Inf\Z|NaN\Z")


def _labels(text, where):
    """Parses `k="v",...` (the inside of the braces); returns a tuple of pairs."""
    out, i = [], 0
    while i < len(text):
        eq = text.find("=", i)
        if eq < 0:
            raise ValueError("%s: label without '='" % where)
        key = text[i:eq]
        if not LABEL.match(key) or key.startswith("__"):
            raise ValueError("%s: bad label name %r" % (where, key))
        if eq + 1 >= len(text) or text[eq + 1] != '"':
            raise ValueError("%s: label value not quoted" % where)
        j, val = eq + 2, []
        while True:
            if j >= len(text):
                raise ValueError("%s: unterminated label value" % where)
            ch = text[j]
            if ch == "\\":
                esc = text[j + 1:j + 2]
                if esc not in ("\\", '"', "n"):
                    raise ValueError("%s: bad escape \\%s" % (where, esc))
                val.append("\n" if esc == "n" else esc)
                j += 2
            elif ch == '"':
                j += 1
                break
            elif ch == "\n":
                raise ValueError("%s: raw newline in a label value" % where)
            else:
                val.append(ch)
                j += 1
        if key in (k for k, _ in out):
            raise ValueError("%s: label %s twice" % (where, key))
        out.append((key, "".join(val)))
        if j == len(text):
            break
        if text[j] != ",":
            raise ValueError("%s: expected ',' between labels" % where)
        i = j + 1
    return tuple(out)


def parse(text):
    """{family: {"type": t, "help": h, "samples": {labels tuple: float}}}."""
    if not text.endswith("\n"):
        raise ValueError("the page does not end with a newline")
    fams, current, done = {}, None, set()
    for n, line in enumerate(text[:-1].split("\n"), 1):
        where = "line %d (%r)" % (n, line)
        if line.startswith("#"):
            m = re.match(r"# (HELP|TYPE) (\S+) (.*)\Z", line)
            if not m:
                raise ValueError("%s: not # HELP or # TYPE" % where)
            kind, name, rest = m.groups()
            if not NAME.match(name):
                raise ValueError("%s: bad metric name" % where)
            if name in done:
                raise ValueError("%s: family %s appears again" % (where, name))
            if current and current != name:
                done.add(current)
            current = name
            fam = fams.setdefault(name, {"type": None, "help": None, "samples": {}})
            if fam["samples"]:
                raise ValueError("%s: %s after the family's samples" % (where, kind))
            if kind == "HELP":
                if fam["help"] is not None:
                    raise ValueError("%s: second HELP" % where)
                if re.search(r"\\[^\\n]", rest.replace("\\\\", "")):
                    raise ValueError("%s: bad escape in HELP" % where)
                fam["help"] = rest
            else:
                if fam["type"] is not None:
                    raise ValueError("%s: second TYPE" % where)
                if rest not in ("counter", "gauge"):
                    raise ValueError("%s: type %r" % (where, rest))
                if rest == "counter" and not name.endswith("_total"):
                    raise ValueError("%s: a counter's name must end in _total" % where)
                fam["type"] = rest
            continue
        m = re.match(r"([^{ ]+)(?:\{(.*)\})? (\S+)\Z", line)
        if not m:
            raise ValueError("%s: not a sample" % where)
        name, labels, value = m.groups()
        if not NAME.match(name):
            raise ValueError("%s: bad metric name" % where)
        if name != current or fams[name]["type"] is None:
            raise ValueError("%s: sample without its family's TYPE just before" % where)
        if not VALUE.match(value):
            raise ValueError("%s: value %r is not a number" % (where, value))
        key = _labels(labels, where) if labels else ()
        samples = fams[name]["samples"]
        if key in samples:
            raise ValueError("%s: duplicate series" % where)
        samples[key] = float(value)
    for name, fam in fams.items():
        if fam["type"] is None or fam["help"] is None:
            raise ValueError("family %s lacks HELP or TYPE" % name)
    return fams


def value(fams, name, **labels):
    """The one sample of name with exactly these labels (KeyError if none)."""
    for k, v in fams[name]["samples"].items():
        if dict(k) == labels:
            return v
    raise KeyError("%s%r" % (name, labels))


def series(fams, name):
    """[(labels dict, value)] of a family."""
    return [(dict(k), v) for k, v in fams[name]["samples"].items()]


def curl(port, path="/metrics", auth=None, method="GET"):
    """(status, headers dict with lowercase names, body) through curl."""
    argv = ["curl", "-sS", "--max-time", "10", "-X", method, "-D", "-",
            "http://127.0.0.1:%d%s" % (port, path)]
    if auth:
        argv[1:1] = ["-H", "Authorization: Bearer " + auth]
    out = subprocess.run(argv, capture_output=True, check=True, timeout=20).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body.decode()


def scrape(port, auth=None):
    """Fetches and parses /metrics; asserts 200 and the 0.0.4 content type."""
    status, headers, body = curl(port, auth=auth)
    assert status == 200, (status, body)
    assert headers["content-type"].startswith("text/plain; version=0.0.4"), headers
    return parse(body)
