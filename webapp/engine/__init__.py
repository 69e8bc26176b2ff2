"""The execution engine: everything that turns a trigger into an order and a new strategy state."""
