"""The parser of <think> and <tool_call> in generated text now lives in minimind.infer.toolcalls,
where RL's agent rollouts (minimind.rl, which may not import the server) use it too. These
names are re-exported so the server and its tests import them from here as before."""

from ..infer.toolcalls import (
    CALL_CLOSE,
    CALL_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    OutputParser,
    parse_output,
    parse_tool_call,
)

__all__ = ["CALL_CLOSE", "CALL_OPEN", "THINK_CLOSE", "THINK_OPEN", "OutputParser", "parse_output", "parse_tool_call"]
