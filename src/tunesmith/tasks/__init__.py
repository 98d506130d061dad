"""Tasks: what differs per task (causal LM now; classification next) behind one interface."""
