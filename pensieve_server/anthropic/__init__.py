"""The Anthropic Messages protocol: validation, rendering, fitting, tool calls, SSE. No Flask, no engine."""
