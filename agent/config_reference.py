"""The agent's configuration reference, rendered from the field descriptions (docs/agent.md
embeds it; a test keeps the two equal)."""

from __future__ import annotations

from pydantic import BaseModel

from agent.config import AgentConfig


def reference_markdown() -> str:
    """A Markdown table per section, from the field descriptions (docs/agent.md embeds it)."""
    out: list[str] = []

    def section(model: type[BaseModel], title: str, prefix: str = "") -> None:
        out.append(f"### `{title}`\n\n| key | default | description |\n|---|---|---|")
        nested: list[tuple[type[BaseModel], str]] = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                nested.append((annotation, name))
                continue
            if field.is_required():
                default = "required"
            else:
                value = field.get_default(call_default_factory=True)
                if isinstance(value, list):
                    value = [str(v) for v in value]
                default = "`" + (str(value) if not isinstance(value, str) else repr(value)) + "`"
            out.append(f"| `{name}` | {default} | {field.description or ''} |")
        out.append("")
        for sub, name in nested:
            section(sub, f"[{prefix}{name}]", f"{prefix}{name}.")

    section(AgentConfig, "top level")
    return "\n".join(out)
