"""Tests for ctrpy.filters: containerd's filter syntax, its errors, and the object adaptors."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from ctrpy import filters
from ctrpy.errors import InvalidArgument
from ctrpy.filters import Adaptor


def obj(labels: Mapping[str, str] | None = None, **fields: str) -> Adaptor:
    return filters.adaptor_from_fields(fields, labels or {})


# A small corpus; each case lists the indexes a filter selects.
CORPUS: list[Adaptor] = [
    obj({"foo": "true"}, name="foo"),  # 0
    obj(name="bar"),  # 1
    obj({"foo": "present", "more complex label": "present"}, name="foo"),  # 2
    obj({"bar": "true"}, name="bar"),  # 3
    obj({'with \\ and "': "present"}, name="fooer"),  # 4
    obj({'with \\ and ".post': "present"}, name="fooer"),  # 5
    obj(name="baz", other="too complex, yo"),  # 6
    obj(name="bazo", other="abc"),  # 7
    obj({"foo": "omg_asdf.asdf-qwer"}, name="compound"),  # 8
    obj({"containerd.io/gc.ref.content.l.0": "sha256:aa", "a.b": "dots"}, name="gc"),  # 9
    obj({"naïve": "café"}, name="ünï"),  # 10
]
EVERYTHING = list(range(len(CORPUS)))


def selected(expression: str) -> list[int]:
    f = filters.parse(expression)
    return [i for i, a in enumerate(CORPUS) if f.match(a)]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("", EVERYTHING),
        ("name", EVERYTHING),
        ("other", [6, 7]),
        ("missing", []),
        ("labels.foo", [0, 2, 8]),
        ("labels.foo,name", [0, 2, 8]),
        ("labels.foo==true", [0]),
        ("labels.foo==omg_asdf.asdf-qwer", [8]),
        ("name==bar", [1, 3]),
        ("name!=bar", [0, 2, 4, 5, 6, 7, 8, 9, 10]),
        ("name==bar,labels.bar", [3]),
        ("name==bar,labels.bar==true", [3]),
        ("name==bar,labels.bar==wrong", []),
        ('other=="too complex, yo"', [6]),
        ("other~=[abc]+,name!=foo", [6, 7]),
        ("other~=/[abc]+/,name!=foo", [6, 7]),
        ("other~=|[abc]+|,name!=foo", [6, 7]),
        ("other~=/[abc]{1,2}/,name!=foo", [6, 7]),
        ('other~=/[abc]{0,1}"\\//,name!=foo', []),
        ('name==foo,labels."more complex label"', [2]),
        ('labels."with \\\\ and \\""==present', [4]),
        ('labels."with \\\\ and \\"".post==present', [5]),
        ('labels."containerd.io/gc.ref.content.l.0"==sha256:aa', [9]),
        ('labels."containerd.io/gc.ref.content.l.0"', [9]),
        ("labels.a.b==dots", [9]),
        ('labels."a".b==dots', [9]),
        ('labels."a.b"', [9]),
        ("  name  ==  bar", [1, 3]),
        ("name ==bar", [1, 3]),
        ("name== bar", [1, 3]),
        ('"name"==bar', [1, 3]),
        ('"na\\x6de"==bar', [1, 3]),
        ('name=="\\x62ar"', [1, 3]),
        ('name=="\\142ar"', [1, 3]),
        ('name=="\\u0062ar"', [1, 3]),
        ('name=="\\U00000062ar"', [1, 3]),
        ("name==ünï", [10]),
        ('labels."naïve"==café', [10]),
        ('labels."na\\u00efve"=="caf\\xc3\\xa9"', [10]),
        ("name~=^ü", [10]),
        ("labels.foo!=true", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
        ("labels.foo!=true,labels.foo", [2, 8]),
        ("name~=^ba", [1, 3, 6, 7]),
        ("name~=z", [6, 7]),
        ("name~=^baz$", [6]),
        ("name~=(?i)^BAZ$", [6]),
        ("name~=^(?P<x>ba)r$", [1, 3]),
        ("name~=^(?<x>ba)r$", [1, 3]),
        ("name~=^ba.\\z", [1, 3, 6]),
        ("name~=^[[:alpha:]]{3}$", [0, 1, 2, 3, 6]),
        ("name~=^[^[:digit:]]+$", EVERYTHING),
        ("labels.foo~=/./", [0, 2, 8]),
        ('labels.foo~=""', EVERYTHING),
        ('name~="^f.*r$"', [4, 5]),
        ("name==foo,labels.foo==true,labels.foo~=t", [0]),
    ],
)
def test_selects(expression: str, expected: list[int]) -> None:
    assert selected(expression) == expected


@pytest.mark.parametrize(
    ("value", "present", "operator", "operand", "expected"),
    [
        ("x", True, "==", "x", True),
        ("x", True, "==", "y", False),
        ("", False, "==", '""', False),  # equality needs presence
        ("", True, "==", '""', True),
        ("x", True, "!=", "y", True),
        ("x", True, "!=", "x", False),
        ("", False, "!=", "x", True),  # absent reads as ""
        ("", False, "!=", '""', False),
        ("abc", True, "~=", "b", True),
        ("abc", True, "~=", "^b", False),
        ("", False, "~=", "^$", True),
        ("", False, "~=", "/./", False),
    ],
)
def test_operator_semantics(
    value: str, present: bool, operator: str, operand: str, expected: bool
) -> None:
    f = filters.parse(f"f{operator}{operand}")
    assert f.match(lambda path: (value, present)) is expected


def test_presence_uses_the_adaptor_flag_not_the_value() -> None:
    f = filters.parse("f")
    assert f.match(lambda path: ("", True))
    assert not f.match(lambda path: ("anything", False))


def test_adaptor_receives_the_parsed_path() -> None:
    seen: list[tuple[str, ...]] = []

    def adaptor(path: object) -> tuple[str, bool]:
        seen.append(tuple(path))  # type: ignore[arg-type]
        return "", False

    filters.parse('labels."a.b/c".d,x.y==1,"with space"~=z').match(adaptor)
    assert seen == [("labels", "a.b/c", "d")]  # AND stops at the first miss
    seen.clear()
    filters.parse('x.y!=1,"with space"~=z').match(adaptor)
    assert seen == [("x", "y"), ("with space",)]


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (
            "labels.|foo|==omg_asdf.asdf-qwer",
            "[labels. >|||< foo|==omg_asdf.asdf-qwer]: invalid quote encountered",
        ),
        ("labels./foo/", "[labels. >|/|< foo/]: invalid quote encountered"),
        ("name==/bar/", "[name== >|/|< bar/]: invalid quote encountered"),
        (
            'labels.?"x".post==present',
            '[labels. >|?|< "x".post==present]: expected field or quoted',
        ),
        ("name==foo,", "[name==foo,]: expected field or quoted"),
        ("labels.", "[labels.]: expected field or quoted"),
        (",", "[ >|,|< ]: expected field or quoted"),
        (" ", "[ ]: expected field or quoted"),
        ("labels..a", "[labels. >|.|< a]: expected field or quoted"),
        ("image~=,id?=?fbaq", "[image~= >|,|< id?=?fbaq]: expected value or quoted"),
        ("name==", "[name==]: expected value or quoted"),
        ("name~=.*", "[name~= >|.|< *]: expected value or quoted"),  # a dot is a separator
        ("name== ", "[name== ]: expected value or quoted"),
        ("labels.ns/key==value", "[labels.ns >|/|< key==value]: quoted literal not terminated"),
        ("labels.key==/value", "[labels.key== >|/|< value]: quoted literal not terminated"),
        ('name=="bar', '[name== >|"|< bar]: quoted literal not terminated'),
        ('name=="b\nar"', '[name== >|"|< b\nar"]: quoted literal not terminated'),
        ('name=="\\q"', '[name== >|"|< \\q"]: illegal escape sequence'),
        ('name=="\\x4"', '[name== >|"|< \\x4"]: illegal numeric escape sequence'),
        ('name=="\\u12G4"', '[name== >|"|< \\u12G4"]: illegal numeric escape sequence'),
        ('name=="\\/"', '[name== >|"|< \\/"]: illegal escape sequence'),
        ("name~=/\\d/", "[name~= >|/|< \\d/]: illegal escape sequence"),
        ('name=="\\777"', '[name== >|"|< \\777"]: unquoting failed: quote syntax error'),
        ('x=="\\U00110000"', '[x== >|"|< \\U00110000"]: unquoting failed: quote syntax error'),
        ("name===bar", '[name >|=|< ==bar]: unsupported operator "==="'),
        ("name=bar", '[name >|=|< bar]: unsupported operator "="'),
        ("name~bar", '[name >|~|< bar]: unsupported operator "~"'),
        ("name@=bar", '[name >|@|< =bar]: expected an operator ("=="|"!="|"~=")'),
        ("labels.foo-bar", '[labels.foo >|-|< bar]: expected an operator ("=="|"!="|"~=")'),
        ("name bar", '[name  >|b|< ar]: expected an operator ("=="|"!="|"~=")'),
        ("name ,x", '[name  >|,|< x]: expected an operator ("=="|"!="|"~=")'),
        ("name==bar ", "[name==bar >| |< ]: unexpected input:  "),
        ("name==bar ,x", "[name==bar >| |< ,x]: unexpected input:  "),
        ('name=="bar"x', '[name=="bar" >|x|< ]: unexpected input: x'),
        ('"name"x', '["name" >|x|< ]: expected an operator ("=="|"!="|"~=")'),
        ("name==a\x00b", "[name==a >|\x00|< b]: unexpected input: \ufffd"),
        ("na\x00me", "[na >|\x00|< me]: unexpected null"),
        ("ü==x", '[ >|ü|< ==x]: expected field or quoted'),
        ("labels.ü", '[labels. >|ü|< ]: expected field or quoted'),
        ("name==ü ü", "[name==ü >| |< ü]: unexpected input:  "),
    ],
)
def test_syntax_errors(expression: str, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        filters.parse(expression)
    assert str(info.value) == f"filters: parse error: {message}: invalid argument"


@pytest.mark.parametrize(
    "pattern",
    [
        "[abc",
        "(abc",
        "abc)",
        "*a",
        "a**",
        "(?=a)",
        "(?!a)",
        "(?<=a)b",
        "(?<!a)b",
        "(?>a)",
        "(a)\\1",
        "(?P<n>a)(?P=n)",
        "a\\Z",
        "a*+",
        "a++",
        "a{2}+",
        "[[:nope:]]",
        "[[:^alpha:]]",
        "\\pL",
    ],
)
def test_bad_regular_expressions_are_invalid_argument(pattern: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        filters.parse(f"name~={filters._go_quote(pattern)}")
    message = str(info.value)
    assert message.startswith('filters: parse error: [name~= >|"|< ')
    assert "invalid regular expression" in message


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("\\d+", "٣", False),  # RE2's \d is ASCII
        ("\\d+", "42", True),
        ("\\w", "é", False),
        ("^a\\z", "a", True),
        ("^a\\z", "a\n", False),
        ("x}+", "x}}", True),  # a literal brace, then a plain repeat
        ("[]a]", "]", True),
        ("[^]a]", "b", True),
        ("[a[]", "[", True),
        ("[+--]", ",", True),  # a range ending in "-"
        ("[a&&b~~c||d]", "&", True),
        ("[a&&b~~c||d]", "x", False),
        ("[[:punct:]]", "`", True),
        ("[[:space:]]", "\v", True),
        ("[[:xdigit:]]{2}", "fF", True),
        ("a{2,}", "aa", True),
        ("a{,2}", "a{,2}", True),  # not a repeat in RE2 either
        ("(?s)a.b", "a\nb", True),
        ("a.b", "a\nb", False),
    ],
)
def test_regexp_dialect(pattern: str, text: str, expected: bool) -> None:
    assert (filters.compile_regexp(pattern).search(text) is not None) is expected


@pytest.mark.parametrize(
    ("expressions", "expected"),
    [
        ([], EVERYTHING),
        ([""], EVERYTHING),
        (["", ""], EVERYTHING),
        (["name==bar", ""], EVERYTHING),  # an empty filter in the OR matches everything
        (["name==bar"], [1, 3]),
        (["name==bar", "name==baz"], [1, 3, 6]),
        (["name==bar,labels.bar", "other==abc"], [3, 7]),
        (["labels.foo==true", "labels.foo==present", "labels.a.b"], [0, 2, 9]),
        (["missing", "missing==x"], []),
    ],
)
def test_parse_all_is_or(expressions: list[str], expected: list[int]) -> None:
    f = filters.parse_all(expressions)
    assert [i for i, a in enumerate(CORPUS) if f.match(a)] == expected


def test_parse_all_accepts_any_iterable() -> None:
    f = filters.parse_all(e for e in ("name==bar", "name==baz"))
    assert [i for i, a in enumerate(CORPUS) if f.match(a)] == [1, 3, 6]
    f = filters.parse_all("name==bar")  # one string, not its characters
    assert [i for i, a in enumerate(CORPUS) if f.match(a)] == [1, 3]


@pytest.mark.parametrize("expressions", [["name==bar", "name=="], ["", "labels."], ["x~=("]])
def test_parse_all_rejects_any_bad_filter(expressions: list[str]) -> None:
    with pytest.raises(InvalidArgument):
        filters.parse_all(expressions)


def test_parsed_structure() -> None:
    f = filters.parse('a,b.c!=x,"d e"~=/y/')
    assert isinstance(f, filters.AllOf)
    selectors = [s for s in f.filters if isinstance(s, filters.Selector)]
    assert len(selectors) == len(f.filters)
    assert [(s.fieldpath, s.operator, s.value) for s in selectors] == [
        (("a",), filters.Operator.PRESENT, ""),
        (("b", "c"), filters.Operator.NOT_EQUAL, "x"),
        (("d e",), filters.Operator.MATCHES, "y"),
    ]
    assert filters.parse("") is filters.ALWAYS


@pytest.mark.parametrize(
    ("labels", "rest", "expected"),
    [
        ({}, ["a"], ("", False)),
        ({"a": "1"}, ["a"], ("1", True)),
        ({"a.b": "1"}, ["a", "b"], ("1", True)),
        ({"a": "1"}, ["a", "b"], ("", False)),
        ({"a": ""}, ["a"], ("", True)),
        ({"x/y.z": "1"}, ["x/y.z"], ("1", True)),
    ],
)
def test_adapt_labels(labels: dict[str, str], rest: list[str], expected: tuple[str, bool]) -> None:
    assert filters.adapt_labels(labels, rest) == expected


def test_adaptor_from_fields() -> None:
    a = filters.adaptor_from_fields({"id": "c1", "runtime.name": "rt", "empty": ""}, {"k": "v"})
    assert a(["id"]) == ("c1", True)
    assert a(["runtime", "name"]) == ("rt", True)
    assert a(["runtime"]) == ("", False)
    assert a(["runtime.name"]) == ("", False)  # one quoted component is not a path
    assert a(["empty"]) == ("", True)
    assert a(["labels", "k"]) == ("v", True)
    assert a([]) == ("", False)
    without = filters.adaptor_from_fields({"labels.k": "v"})
    assert without(["labels", "k"]) == ("v", True)


def matches(expression: str, adaptor: Adaptor) -> bool:
    return filters.parse(expression).match(adaptor)


def test_container_adaptor() -> None:
    c = filters.container_adaptor(
        "web", "docker.io/library/busybox:latest", "io.containerd.runc.v2", "overlayfs",
        {"app": "web", "io.cri/kind": "x"},
    )  # fmt: skip
    assert matches("id==web", c)
    assert matches("image==docker.io/library/busybox:latest", c)
    assert matches("runtime.name==io.containerd.runc.v2", c)
    assert matches("snapshotter==overlayfs", c)
    assert matches('labels.app==web,labels."io.cri/kind"', c)
    assert not matches("runtime", c)
    assert not matches("spec", c)
    bare = filters.container_adaptor("web", "", "", "", {})
    assert not matches("image", bare)
    assert matches("image!=x", bare)
    assert not matches("labels.app", bare)


def test_image_adaptor() -> None:
    i = filters.image_adaptor(
        "docker.io/library/busybox:latest",
        "sha256:" + "ab" * 32,
        "application/vnd.oci.image.index.v1+json",
        {"l": "1"},
        {"org.opencontainers.image.ref.name": "latest"},
    )
    assert matches("name~=busybox", i)
    assert matches("target.digest~=^sha256:", i)
    assert matches('target.mediatype=="application/vnd.oci.image.index.v1+json"', i)
    assert matches("target.mediatype==application/vnd.oci.image.index.v1+json", i)
    assert matches("labels.l==1", i)
    assert matches("annotations.org.opencontainers.image.ref.name==latest", i)
    assert not matches("target", i)
    assert not matches("annotations.x", filters.image_adaptor("n", "", "", {}))


def test_namespace_and_lease_adaptors() -> None:
    n = filters.namespace_adaptor("default", {"a": "b"})
    assert matches("name==default,labels.a==b", n)
    assert not matches("name", filters.namespace_adaptor("", {}))
    le = filters.lease_adaptor("lease-1", {"containerd.io/gc.expire": "2024"})
    assert matches('id==lease-1,labels."containerd.io/gc.expire"', le)
    assert not matches("name", le)


def test_content_adaptors() -> None:
    c = filters.content_adaptor("sha256:" + "0" * 64, 1234, {"containerd.io/gc.root": "x"})
    assert matches("digest~=^sha256:0+$", c)
    assert matches("size==1234", c)
    assert matches('labels."containerd.io/gc.root"', c)
    assert matches("digest", filters.content_adaptor("", 0, {}))  # always present
    s = filters.content_status_adaptor("pull-1")
    assert matches("ref==pull-1", s)
    assert matches("ref", filters.content_status_adaptor(""))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("active", "active"), ("VIEW", "view"), ("Committed", "committed"), ("unknown", None)],
)
def test_snapshot_adaptor(kind: str, expected: str | None) -> None:
    s = filters.snapshot_adaptor("layer-2", "", kind, {"containerd.io/snapshot.ref": "r"})
    assert matches("name==layer-2", s)
    assert matches("parent", s)  # present even when empty
    assert matches('parent==""', s)
    assert matches('labels."containerd.io/snapshot.ref"==r', s)
    if expected is None:
        assert not matches("kind", s)
    else:
        assert matches(f"kind=={expected}", s)


def test_plugin_and_envelope_adaptors() -> None:
    p = filters.plugin_adaptor("io.containerd.snapshotter.v1", "overlayfs")
    assert matches("type==io.containerd.snapshotter.v1,id==overlayfs", p)
    assert matches('type~="^io\\\\.containerd\\\\.snapshotter"', p)
    assert not matches("platforms", p)
    event = filters.adaptor_from_fields({"id": "c1"})
    e = filters.envelope_adaptor("default", "/tasks/exit", event)
    assert matches('topic=="/tasks/exit",namespace==default,event.id==c1', e)
    assert matches("topic~=|^/tasks/|", e)
    assert not matches("event.id", filters.envelope_adaptor("default", "/tasks/exit"))
