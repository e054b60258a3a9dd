"""One module per `pensieve` command."""
