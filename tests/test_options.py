"""Typed registry options: checks, JSON Schema fragments, inference from bare defaults."""

from trainables.options import REQUIRED, Option, defaults, normalize, option


def test_bare_defaults_infer_their_json_type():
    opts = normalize({"depth": 2, "dropout": 0.0, "padding": "same", "flag": False})
    assert opts["depth"].types == ("integer",) and opts["dropout"].types == ("number",)
    assert opts["depth"].check("depth", 3) is None
    assert "an integer" in opts["depth"].check("depth", 2.5)
    assert opts["dropout"].check("dropout", 0) is None  # an integer is a number
    assert "true or false" in opts["flag"].check("flag", 1)
    assert defaults(opts) == {"depth": 2, "dropout": 0.0, "padding": "same", "flag": False}


def test_bounds_choices_nan_and_short_messages():
    o = Option(1.0, ("number",), minimum=0.0, maximum=2.0)
    assert o.check("x", float("nan")).startswith("x must be a finite number")
    assert "at least 0.0" in o.check("x", -1) and "at most 2.0" in o.check("x", 3)
    c = Option("a", choices=("a", "b"))
    assert c.check("c", "b") is None and "one of 'a', 'b'" in c.check("c", "z")
    msg = Option(1, ("integer",)).check("n", "y" * 10_000)
    assert len(msg) < 120  # an absurd value never floods an error line


def test_json_schema_fragments():
    assert Option(3, ("integer",), help="layers", minimum=1).json_schema() == {
        "description": "layers", "type": "integer", "minimum": 1, "default": 3}
    assert Option(5, ("integer", "array"), items=("integer",)).json_schema()["type"] == ["integer", "array"]
    req = Option(types=("string",))
    assert req.required and req.default is REQUIRED and "default" not in req.json_schema()
    assert option(req) is req
