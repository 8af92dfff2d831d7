"""loraplex: shared top-level package (the fleet simulator and capacity planner live in loraplex.sim)."""
