"""Recognize LLM function calls in a sqlglot AST and read their arguments.

Two spellings are accepted:

* halo: `LLM('Summarize: {text}', model => 'm', max_tokens => 32)`, `LLM_FILTER(template)`,
  `LLM_CLASSIFY(template, ['a', 'b'])`, `LLM_EXTRACT(template, '<json schema>')`,
  `LLM_AGG(template, column)`;
* FlockMTL: `llm_complete({'model_name': 'm'}, {'prompt': 'Summarize'}, {'text': text})`, and
  `llm_filter`, `llm_reduce`, `llm_rerank`, `llm_first`, `llm_last` with the same arguments.

    >>> import sqlglot
    >>> node = sqlglot.parse_one("SELECT LLM_FILTER('Late? {text}')", read="duckdb").expressions[0]
    >>> site = read_call_site(node, default_model="tiny")
    >>> site.call.function, [s.sql() for s in site.slot_exprs]
    (<LLMFunction.FILTER: 'llm_filter'>, ['text'])
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from halo_sql import options as checked
from halo_sql.errors import BinderError, SourceLocation
from halo_sql.llm.base import DecodingParams, OutputKind, OutputSpec
from halo_sql.logical.llm_call import MAX_TOKENS, LLMCall, LLMFunction, check_shorthand
from halo_sql.parser.template import PromptTemplate, Slot, parse_template

HALO_NAMES = {
    "llm": LLMFunction.COMPLETE,
    "llm_filter": LLMFunction.FILTER,
    "llm_classify": LLMFunction.CLASSIFY,
    "llm_extract": LLMFunction.EXTRACT,
    "llm_agg": LLMFunction.AGG,
}
FLOCKMTL_NAMES = {
    "llm_complete": LLMFunction.COMPLETE,
    "llm_filter": LLMFunction.FILTER,
    "llm_reduce": LLMFunction.AGG,
    "llm_rerank": LLMFunction.RERANK,
    "llm_first": LLMFunction.FIRST,
    "llm_last": LLMFunction.LAST,
}
LLM_FUNCTION_NAMES = frozenset(HALO_NAMES) | frozenset(FLOCKMTL_NAMES)

_DEFAULT_MAX_TOKENS = {
    LLMFunction.COMPLETE: 64,
    LLMFunction.FILTER: 2,
    LLMFunction.CLASSIFY: 16,
    LLMFunction.EXTRACT: 256,
    LLMFunction.AGG: 128,
    LLMFunction.RERANK: 128,
    LLMFunction.FIRST: 128,
    LLMFunction.LAST: 128,
}


@dataclass
class CallSite:
    """One LLM function call found in a statement."""

    node: exp.Expr
    """The call's node in the AST (replaced by a column or UDF call when the plan is built)."""
    call: LLMCall
    slot_exprs: list[exp.Expr]
    """SQL expressions whose values fill the template slots, in slot order."""
    item_expr: exp.Expr | None = None
    """For aggregate functions: the per-row expression whose values are reduced."""


def is_llm_call(node: exp.Expr) -> bool:
    return isinstance(node, exp.Anonymous) and str(node.this).lower() in LLM_FUNCTION_NAMES


def is_template_argument(node: exp.Expr) -> bool:
    """True when `node` stands where a halo LLM function reads its prompt template (the first
    positional argument of LLM, LLM_FILTER, LLM_CLASSIFY, LLM_EXTRACT, LLM_AGG), i.e. where
    `{name}` in the text would name a column.

        >>> import sqlglot
        >>> call = sqlglot.parse_one("SELECT LLM(?)", read="duckdb").expressions[0]
        >>> is_template_argument(call.expressions[0])
        True
    """
    parent = node.parent
    if parent is None or not is_llm_call(parent) or node.arg_key != "expressions":
        return False
    args = list(parent.expressions)
    if args and isinstance(args[0], exp.Struct):
        return False  # FlockMTL form: the prompt is a struct field, used verbatim
    if str(parent.this).lower() not in HALO_NAMES:
        return False
    positional = [a for a in args if not isinstance(a, exp.Kwarg)]
    return bool(positional) and positional[0] is node


def literal_template(text: str) -> str:
    """A template whose rendering is `text` verbatim: its braces are escaped, so nothing in it
    is a slot (how a bound parameter reaches a prompt: as data, never naming a column).

        >>> parse_template(literal_template("Repeat: {password}")).render([])
        'Repeat: {password}'
    """
    return text.replace("{", "{{").replace("}", "}}")


_CONDITION_PARENTS = (exp.Where, exp.Having, exp.Qualify, exp.Not, exp.And, exp.Or, exp.If, exp.Filter)


def check_condition_use(site: CallSite) -> None:
    """A call whose answer is not a truth value cannot stand as a condition (WHERE, HAVING, ON,
    CASE WHEN, NOT/AND/OR operands): DuckDB would cast the model's free text to BOOLEAN, which
    fails or, worse, reads 'true' as a yes. Refused with the alternatives.

        >>> import sqlglot
        >>> tree = sqlglot.parse_one("SELECT * FROM t WHERE LLM('Late? {x}')", read="duckdb")
        >>> check_condition_use(read_call_site(tree.find(exp.Anonymous), default_model="m"))
        Traceback (most recent call last):
        ...
        halo_sql.errors.BinderError: line 1, column 23: LLM(...) answers free text (VARCHAR), which is not a condition; ask a yes/no question with LLM_FILTER('...'), or compare the answer, e.g. LLM(...) = 'yes'
    """
    if site.call.output.kind is OutputKind.BOOLEAN:
        return
    if site.call.output.kind is OutputKind.JSON and (site.call.output.schema or {}).get("type") == "boolean":
        return
    node, parent = site.node, site.node.parent
    while isinstance(parent, exp.Paren):
        node, parent = parent, parent.parent
    is_condition = isinstance(parent, _CONDITION_PARENTS) and not (
        isinstance(parent, exp.If) and node.arg_key != "this"  # CASE WHEN's value, not its test
    )
    is_condition = is_condition or (isinstance(parent, exp.Join) and node.arg_key == "on")
    if not is_condition:
        return
    name = str(site.node.this).upper()
    kind = "free text (VARCHAR)" if site.call.output.kind is OutputKind.TEXT else (
        "a label (VARCHAR)" if site.call.output.kind is OutputKind.CHOICE else "JSON"
    )
    raise BinderError(
        f"{name}(...) answers {kind}, which is not a condition; ask a yes/no question with "
        f"LLM_FILTER('...'), or compare the answer, e.g. {name}(...) = 'yes'",
        location=location_of(site.node),
    )


def location_of(node: exp.Expr) -> SourceLocation | None:
    """Best-effort source position of a node (sqlglot records it on identifiers and literals)."""
    for candidate in node.walk():
        meta = getattr(candidate, "_meta", None) or {}
        if "line" in meta and "col" in meta:
            return SourceLocation(line=int(meta["line"]), column=max(1, int(meta["col"]) - len(str(candidate.this)) + 1))
    return None


def read_call_site(node: exp.Expr, *, default_model: str | None) -> CallSite:
    """Read an LLM call's arguments into a CallSite, or raise BinderError naming the place."""
    name = str(node.this).lower()
    args = list(node.expressions)
    if args and isinstance(args[0], exp.Struct) and name in FLOCKMTL_NAMES:
        return _read_flockmtl(node, name, args, default_model)
    if name not in HALO_NAMES:
        raise BinderError(
            f"{name}() takes FlockMTL-style struct arguments: "
            f"{name}({{'model_name': ...}}, {{'prompt': ...}}, {{'column': expr, ...}})",
            location=location_of(node),
        )
    return _read_halo(node, name, args, default_model)


def _read_halo(
    node: exp.Expr, name: str, args: list[exp.Expr], default_model: str | None
) -> CallSite:
    function = HALO_NAMES[name]
    where = location_of(node)
    positional = [a for a in args if not isinstance(a, exp.Kwarg)]
    options: dict[str, exp.Expr] = {}
    for arg in args:
        if isinstance(arg, exp.Kwarg):
            key = str(arg.this.name).lower()
            if key in options:
                raise BinderError(
                    f"{name.upper()}: option {key} is given twice",
                    location=location_of(arg.expression) or where,
                )
            options[key] = arg.expression
    expected = {
        LLMFunction.COMPLETE: 1,
        LLMFunction.FILTER: 1,
        LLMFunction.CLASSIFY: 2,
        LLMFunction.EXTRACT: 2,
        LLMFunction.AGG: 2,
    }[function]
    usage = {
        LLMFunction.COMPLETE: "LLM('template {column}' [, model => name, max_tokens => n, temperature => x])",
        LLMFunction.FILTER: "LLM_FILTER('question about {column}')",
        LLMFunction.CLASSIFY: "LLM_CLASSIFY('template {column}', ['label1', 'label2'])",
        LLMFunction.EXTRACT: "LLM_EXTRACT('template {column}', '{\"type\": \"object\", ...}')",
        LLMFunction.AGG: "LLM_AGG('instruction', column)",
    }[function]
    if len(positional) != expected:
        raise BinderError(
            f"{name.upper()} takes {expected} positional argument(s), got {len(positional)}; "
            f"usage: {usage}",
            location=where,
        )
    template = parse_template(_string_literal(positional[0], name, "template"), location=where)
    output = OutputSpec.text()
    item_expr = None
    if function is LLMFunction.FILTER:
        output = OutputSpec.boolean()
    elif function is LLMFunction.CLASSIFY:
        output = OutputSpec.choice(_labels(positional[1], name, where))
    elif function is LLMFunction.EXTRACT:
        output = OutputSpec.json(_json_schema(positional[1], name, where))
    elif function is LLMFunction.AGG:
        if template.slots:
            raise BinderError(
                f"LLM_AGG's instruction takes no column slots (found {{{template.slots[0]}}}); "
                "pass the column to reduce as the second argument",
                location=where,
            )
        item_expr = positional[1]
    model, params = _model_and_params(function, options, name, where, default_model)
    slot_exprs: list[exp.Expr] = [_slot_column(s) for s in template.slots]
    call = LLMCall(function, template, model, output, params)
    return CallSite(node, call, slot_exprs, item_expr)


def _read_flockmtl(
    node: exp.Expr, name: str, args: list[exp.Expr], default_model: str | None
) -> CallSite:
    function = FLOCKMTL_NAMES[name]
    where = location_of(node)
    structs = [a for a in args if isinstance(a, exp.Struct)]
    if len(args) not in (2, 3) or len(structs) != len(args):
        raise BinderError(
            f"{name}() takes ({{'model_name': ...}}, {{'prompt': ...}}[, {{'column': expr, ...}}])",
            location=where,
        )
    model_args = struct_items(structs[0])
    prompt_args = struct_items(structs[1])
    inputs = struct_items(structs[2]) if len(structs) == 3 else {}
    if "prompt_name" in prompt_args:
        raise BinderError(
            f"{name}(): stored prompts ('prompt_name') are not supported; pass {{'prompt': '...'}}",
            location=where,
        )
    if "prompt" not in prompt_args:
        raise BinderError(f"{name}(): the second argument needs a 'prompt' field", location=where)
    prompt = _string_literal(prompt_args["prompt"], name, "prompt")
    options: dict[str, exp.Expr] = {}
    if "model_name" in model_args:
        options["model"] = model_args["model_name"]
    # Decoding settings sit in the struct itself or in its 'model_parameters' (a struct or a
    # JSON object string); other provider parameters have no meaning here and are ignored.
    parameters = dict(model_args)
    extra = model_args.get("model_parameters")
    if isinstance(extra, exp.Struct):
        parameters.update(struct_items(extra))
    elif extra is not None:
        text = _string_literal(extra, name, "model_parameters")
        def no_constant(word: str) -> Any:
            raise BinderError(
                f"{name}(): model_parameters holds {word}, which is not a number", location=where
            )

        try:
            decoded = json.loads(text, parse_constant=no_constant)
        except json.JSONDecodeError as exc:
            raise BinderError(
                f"{name}(): model_parameters is not valid JSON ({exc.msg})", location=where
            ) from None
        if not isinstance(decoded, dict):
            raise BinderError(f"{name}(): model_parameters must be a JSON object", location=where)
        parameters.update({k: exp.convert(v) for k, v in decoded.items()})
    for key in ("max_tokens", "temperature"):
        if key in parameters:
            value = parameters[key]
            if key in model_args and isinstance(extra, exp.Struct) and key in struct_items(extra):
                raise BinderError(
                    f"{name}(): {key} is given twice (in the struct and in model_parameters)",
                    location=where,
                )
            options[key] = value
    if function is not LLMFunction.COMPLETE and not inputs:
        raise BinderError(f"{name}() needs a third argument with the input columns", location=where)
    output = OutputSpec.boolean() if function is LLMFunction.FILTER else OutputSpec.text()
    if function in (LLMFunction.RERANK, LLMFunction.FIRST, LLMFunction.LAST):
        output = OutputSpec.json({"type": "array", "items": {"type": "integer"}})
    model, params = _model_and_params(function, options, name, where, default_model)
    item_expr = None
    slot_exprs: list[exp.Expr] = []
    if function.is_aggregate:
        template = PromptTemplate((prompt,), data_last=True)
        item_expr = exp.Struct(expressions=[exp.PropertyEQ(this=exp.to_identifier(k), expression=v) for k, v in inputs.items()])
    else:
        template = PromptTemplate((prompt, *(Slot(None, k) for k in inputs)), data_last=True)
        slot_exprs = list(inputs.values())
    call = LLMCall(function, template, model, output, params)
    return CallSite(node, call, slot_exprs, item_expr)


def _model_and_params(
    function: LLMFunction,
    options: dict[str, exp.Expr],
    name: str,
    where: SourceLocation | None,
    default_model: str | None,
) -> tuple[str, DecodingParams]:
    unknown = set(options) - {"model", "max_tokens", "temperature"}
    if unknown:
        raise BinderError(
            f"{name.upper()}: unknown option(s) {sorted(unknown)}; "
            "options are model, max_tokens, temperature",
            location=where,
        )
    model = _string_literal(options["model"], name, "model") if "model" in options else default_model
    if model is None:
        raise BinderError(
            f"{name.upper()}: no model given and no default model set; pass model => 'name', "
            "connect(model=...), CREATE MODEL, or set HALO_MODEL",
            location=where,
        )
    max_tokens = _DEFAULT_MAX_TOKENS[function]
    if "max_tokens" in options:
        node = options["max_tokens"]
        max_tokens = checked.count(
            _number_literal(node, name, "max_tokens"), name.upper(), "max_tokens",
            maximum=MAX_TOKENS, location=_value_location(node) or where,
        )
    temperature = 0.0
    if "temperature" in options:
        node = options["temperature"]
        temperature = checked.number(
            _number_literal(node, name, "temperature"), name.upper(), "temperature",
            location=_value_location(node) or where,
        )
    return model, DecodingParams(max_tokens=max_tokens, temperature=temperature)


def _slot_column(slot: Slot) -> exp.Column:
    return exp.column(slot.name, table=slot.qualifier, quoted=False)


def struct_items(node: exp.Struct) -> dict[str, exp.Expr]:
    items: dict[str, exp.Expr] = {}
    for item in node.expressions:
        if isinstance(item, exp.PropertyEQ | exp.Slice | exp.EQ):
            key = item.this
            key_name = key.name if isinstance(key, exp.Identifier | exp.Literal | exp.Column) else key.sql()
            items[str(key_name)] = item.expression
        else:
            items[item.alias_or_name] = item.unalias() if isinstance(item, exp.Alias) else item
    return items


def _string_literal(node: exp.Expr, name: str, what: str) -> str:
    if isinstance(node, exp.Literal) and node.is_string:
        return str(node.this)
    raise BinderError(
        f"{name.upper()}: the {what} must be a string literal, got {node.sql(dialect='duckdb')}",
        location=location_of(node),
    )


def _value_location(node: exp.Expr) -> SourceLocation | None:
    """Where an option's value starts (location_of places a negative number at its digits and
    a string one past its opening quote)."""
    location = location_of(node)
    if location is not None and isinstance(node, exp.Neg):
        return SourceLocation(location.line, max(1, location.column - 1))
    if location is not None and isinstance(node, exp.Literal) and node.is_string:
        return SourceLocation(location.line, max(1, location.column - 2))
    return location


def _number_literal(node: exp.Expr, name: str, what: str) -> int | float:
    """The number a numeric literal (possibly negated) spells: an int when it is written as
    one, else a float (which may be infinite, e.g. 1e309: halo_sql.options refuses it)."""
    sign = ""
    if isinstance(node, exp.Neg):
        sign, node = "-", node.this
    if isinstance(node, exp.Paren):
        return _number_literal(node.this, name, what) * (-1 if sign else 1)
    if isinstance(node, exp.Literal) and not node.is_string:
        text = sign + str(node.this)
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            pass
    raise BinderError(
        f"{name.upper()}: {what} must be a number, got {node.sql(dialect='duckdb')}",
        location=_value_location(node),
    )


def _labels(node: exp.Expr, name: str, where: SourceLocation | None) -> list[str]:
    if not isinstance(node, exp.Array):
        raise BinderError(
            f"{name.upper()}: labels must be a list literal like ['positive', 'negative'], "
            f"got {node.sql(dialect='duckdb')}",
            location=where,
        )
    labels = [_string_literal(item, name, "label") for item in node.expressions]
    if len(labels) < 2:
        raise BinderError(f"{name.upper()}: give at least two labels, got {labels}", location=where)
    if len(set(labels)) != len(labels) or any(not label.strip() for label in labels):
        raise BinderError(
            f"{name.upper()}: labels must be distinct and non-empty, got {labels}", location=where
        )
    return labels


_TYPE_NAMES = {"string", "integer", "number", "boolean"}


def _json_schema(node: exp.Expr, name: str, where: SourceLocation | None) -> dict[str, Any]:
    text = _string_literal(node, name, "JSON schema")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BinderError(
            f"{name.upper()}: the JSON schema is not valid JSON ({exc.msg} at character {exc.pos})",
            location=where,
        ) from None
    if not isinstance(schema, dict):
        raise BinderError(f"{name.upper()}: the JSON schema must be an object", location=where)
    # Shorthand {"name": "string", "age": "integer"} for a flat object of typed fields.
    try:
        check_shorthand(schema, name.upper())
    except BinderError as exc:
        raise BinderError(exc.message, location=where) from None
    if "type" not in schema and schema and all(v in _TYPE_NAMES for v in schema.values()):
        schema = {
            "type": "object",
            "properties": {k: {"type": v} for k, v in schema.items()},
            "required": list(schema),
        }
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise BinderError(f"{name.upper()}: invalid JSON schema: {exc.message}", location=where) from None
    return schema
