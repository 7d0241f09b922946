"""The Mermaid export of a definition."""

from __future__ import annotations

from fleetchat.workflows import parse_definition, to_mermaid

SMALL = """name: small
version: 0.1.0
defaults: {timeout: {start_to_close: 1m}}
steps:
  - id: classify
    type: agent_task
    agent: {capabilities: {classify: 1}}
    catch: [{errors: [fleetchat.timeout, fleetchat.agent_error], next: human}]
  - id: route
    type: condition
    cases: [{when: "steps.classify.output.score > 0.5", next: checks}]
    default: human
  - id: checks
    type: parallel
    branches:
      a: [{id: left, type: agent_task, agent: {id: "bot-a"}}]
      b: [{id: right, type: set, values: {x: 1}}]
  - id: each
    type: map
    items: input.items
    steps: [{id: ship, type: sub_workflow, workflow: ship@1.0.0}]
    next: end
  - id: human
    type: wait
    message: {channel: humans}
    timeout: 10m
    catch: [{errors: [fleetchat.timeout], next: give_up}]
    next: end
  - id: give_up
    type: fail
"""


def test_to_mermaid_draws_nodes_edges_catches_and_subgraphs() -> None:
    expected = "\n".join(
        [
            "flowchart TD",
            "    __start__((start))",
            '    classify["classify<br/>agent_task"]',
            '    route{"route<br/>condition"}',
            '    subgraph checks["checks<br/>parallel, join all"]',
            '        subgraph checks__a["a"]',
            '            left["left<br/>agent_task"]',
            "        end",
            '        subgraph checks__b["b"]',
            '            right[/"right<br/>set"/]',
            "        end",
            "    end",
            '    subgraph each["each<br/>map over input.items"]',
            '        ship[["ship<br/>sub_workflow"]]',
            "    end",
            '    human(["human<br/>wait"])',
            '    give_up("give_up<br/>fail")',
            "    __end__((end))",
            "    __fail__((fail))",
            "    __start__ --> classify",
            "    classify --> route",
            '    classify -.->|"fleetchat.timeout, fleetchat.agent_error"| human',
            '    route -->|"steps.classify.output.score #gt; 0.5"| checks',
            '    route -->|"default"| human',
            "    checks --> each",
            "    each --> __end__",
            "    human --> __end__",
            '    human -.->|"fleetchat.timeout"| give_up',
            "    give_up --> __fail__",
        ]
    )

    assert to_mermaid(parse_definition(SMALL)) == expected + "\n"


def test_a_step_named_like_a_mermaid_keyword_gets_a_safe_node_id() -> None:
    definition = parse_definition(
        {
            "name": "kw",
            "version": "1.0.0",
            "steps": [{"id": "style", "type": "set", "values": {"a": 'x "quoted" <b>'}}],
        }
    )

    text = to_mermaid(definition)

    assert "__start__ --> step_style" in text
    assert 'step_style[/"style<br/>set"/]' in text
