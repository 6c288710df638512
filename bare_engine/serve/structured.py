"""Structured outputs in the server: response_format and tools (chat), vLLM's structured_outputs field
(both endpoints), the tool_calls reply, and request fields the server does not know (logged once)."""

from __future__ import annotations

import json
import logging
import uuid

from bare_engine.errors import InvalidSamplingParamsError
from bare_engine.serve.protocol import bad_request
from bare_engine.structured.params import StructuredOutputsParams

logger = logging.getLogger(__name__)

VLLM_FIELDS = ("json", "regex", "choice", "grammar", "json_object", "disable_any_whitespace")


def from_structured_outputs(field: dict | None) -> StructuredOutputsParams | None:
    """vLLM's ``structured_outputs`` request field: {"json"|"regex"|"choice"|"grammar"|"json_object": ...}."""
    if field is None:
        return None
    unknown = sorted(set(field) - set(VLLM_FIELDS))
    if unknown:
        raise bad_request(f"structured_outputs: unknown field(s) {', '.join(unknown)}; expected one of "
                          f"{', '.join(VLLM_FIELDS[:-1])}", param="structured_outputs")
    try:
        return StructuredOutputsParams(**field)
    except InvalidSamplingParamsError as exc:
        raise bad_request(str(exc), param="structured_outputs") from None


def from_response_format(response_format: dict | None) -> StructuredOutputsParams | None:
    """OpenAI's ``response_format``: text, json_object, or json_schema (``strict`` or not, the output
    always follows the schema)."""
    if response_format is None:
        return None
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise bad_request("response_format json_schema needs json_schema.schema (an object)",
                              param="response_format")
        return StructuredOutputsParams(json=schema)
    raise bad_request(f"response_format type must be text, json_object or json_schema, got {kind!r}",
                      param="response_format")


class ToolChoice:
    """The function(s) a reply must call, and the schema their call is generated under."""

    def __init__(self, tools: list, tool_choice):
        functions = {}
        for tool in tools or []:
            function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise bad_request("each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                                  param="tools")
            functions[function["name"]] = function.get("parameters") or {"type": "object", "properties": {}}
        if tool_choice in (None, "auto"):
            raise bad_request('tool_choice "auto" needs a tool-call parser for the model family, which this '
                              'server does not have; use tool_choice "required" or name a function',
                              param="tool_choice")
        if tool_choice == "required":
            self.named = None
        elif isinstance(tool_choice, dict) and isinstance((tool_choice.get("function") or {}).get("name"), str):
            self.named = tool_choice["function"]["name"]
            if self.named not in functions:
                raise bad_request(f"tool_choice names {self.named!r}, which is not among the tools",
                                  param="tool_choice")
        else:
            raise bad_request(f"tool_choice must be \"none\", \"required\" or a named function, got {tool_choice!r}",
                              param="tool_choice")
        self.functions = functions

    def structured(self) -> StructuredOutputsParams:
        """A named function: its arguments. "required": {"name": one of the tools, "arguments": its schema}.
        Compact JSON: the reply re-serializes the arguments, so free whitespace would only cost tokens."""
        if self.named is not None:
            return StructuredOutputsParams(json=self.functions[self.named], disable_any_whitespace=True)
        calls = [{"type": "object", "properties": {"name": {"const": name}, "arguments": params},
                  "required": ["name", "arguments"], "additionalProperties": False}
                 for name, params in self.functions.items()]
        return StructuredOutputsParams(json=calls[0] if len(calls) == 1 else {"anyOf": calls},
                                       disable_any_whitespace=True)

    def tool_calls(self, text: str) -> list[dict] | None:
        """The reply's tool_calls in OpenAI's shape, or None when ``text`` is not a complete call."""
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if self.named is not None:
            name, arguments = self.named, value
        elif isinstance(value, dict) and "name" in value:
            name, arguments = value["name"], value.get("arguments", {})
        else:
            return None
        return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps(arguments)}}]


def chat_structured(body) -> tuple[StructuredOutputsParams | None, ToolChoice | None]:
    """The chat request's constraint (at most one source of it) and its tool choice, if it calls tools."""
    tools = None
    if body.tools and body.tool_choice != "none":
        tools = ToolChoice(body.tools, body.tool_choice)
    sources = {"structured_outputs": from_structured_outputs(body.structured_outputs),
               "response_format": from_response_format(body.response_format),
               "tools": tools.structured() if tools is not None else None}
    given = [name for name, spec in sources.items() if spec is not None]
    if len(given) > 1:
        raise bad_request(f"{' and '.join(given)} each constrain the output; give only one", param=given[1])
    if tools is not None and body.stream:
        raise bad_request("tools with stream: true are not supported", param="stream")
    return (sources[given[0]] if given else None), tools


def log_unknown_fields(body, logged: set[str]) -> None:
    """Fields the request model does not declare are ignored: say so once per field name (as vLLM does)."""
    for name in sorted(set(body.model_extra or {}) - logged):
        logged.add(name)
        logger.warning("ignoring unknown request field %r (logged once per field name)", name)
