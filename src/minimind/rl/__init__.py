"""Reinforcement learning: verifiable rewards, the agent tools sandbox and RL prompt data.

The foundations of `minimind grpo / ppo / agent` (issue 14): the training stages themselves
come later, on the generation engine (infer/engine.py). Rewards and tools need no model: try
them in a Python shell (README, "Reinforcement learning: rewards and tools").
"""

from .calculator import CalcError, calculate
from .data import RLPrompt, read_rl_prompts
from .rewards import (
    REWARDS,
    Combined,
    combine,
    get_reward,
    load_reward_fn,
    make_length,
    make_repetition,
    parse_weights,
    register_reward,
)
from .rollout import Trajectory, agent_rollouts
from .tools import BUILTIN_SCHEMAS, ToolBox, ToolCall, ToolError, ToolResult, check_arguments, parse_tool_calls

__all__ = [
    "BUILTIN_SCHEMAS",
    "REWARDS",
    "CalcError",
    "Combined",
    "RLPrompt",
    "ToolBox",
    "ToolCall",
    "ToolError",
    "ToolResult",
    "Trajectory",
    "agent_rollouts",
    "calculate",
    "check_arguments",
    "combine",
    "get_reward",
    "load_reward_fn",
    "make_length",
    "make_repetition",
    "parse_tool_calls",
    "parse_weights",
    "read_rl_prompts",
    "register_reward",
]
