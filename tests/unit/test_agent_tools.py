"""The MCP tool catalogue, as a language model reads it (no database needed)."""

from __future__ import annotations

import pytest

from tradeops.agents.tools import TOOLS, AgentTool
from tradeops.orders.states import OrderStatus

NAMES = [tool.name for tool in TOOLS]


def test_no_tool_decides_on_an_order() -> None:
    assert not [name for name in NAMES if "approve" in name or "reject" in name]
    assert len(set(NAMES)) == len(NAMES)


@pytest.mark.parametrize("tool", TOOLS, ids=NAMES)
def test_each_tool_says_what_it_needs_and_takes_only_known_arguments(tool: AgentTool) -> None:
    assert "Needs the scope" in tool.description or "Any key may call it" in tool.description
    assert tool.input_schema["type"] == "object"
    assert tool.input_schema["additionalProperties"] is False
    assert tool.output_schema["type"] == "object"


def test_decimals_are_described_as_strings() -> None:
    submit = next(tool for tool in TOOLS if tool.name == "submit_order")
    properties = submit.input_schema["properties"]
    for field in ("quantity", "price"):
        assert "decimal string" in properties[field]["description"]
    assert "human approver" in submit.description


@pytest.mark.parametrize("name", ["get_order", "list_orders", "submit_order", "replace_order"])
def test_order_tools_name_every_status_an_order_can_have(name: str) -> None:
    """An agent reading an order meets every status; each is named (and said what it means)."""
    tool = next(tool for tool in TOOLS if tool.name == name)
    for status in OrderStatus:
        assert f"{status} (" in tool.description, status
