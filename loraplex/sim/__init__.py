"""Fleet simulator and capacity planner: a discrete-event model of loraplex pools that drives the project's
own placement, sizing and cache-eviction code (`python -m loraplex.sim --help`)."""
