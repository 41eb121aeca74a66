"""topology/: WHAT runs where. Pure data and functions; the only I/O is loading YAML in the loaders.

    load_cluster(name_or_path) -> Cluster          configs/clusters/<name>.yaml (inventory.py)
    load_recipe(name_or_path) -> Recipe            configs/models/<name>.yaml (recipe.py)
    parse_topology(name) -> Topology               solo, tpN-mp, tpN-ray, Nx-solo-shuffle, Nx-tpK-shuffle;
                                                   the registry of known topologies (registry.py)
    plan(topology, cluster, recipe, *, secrets=PlanSecrets.generate()) -> LaunchPlan   (kinds.py)
    plan_text(plan) / plan_json(plan)              the dry run, secrets as *** (render.py)

cluster/ executes a LaunchPlan (plan.py); `topo plan` prints one.
"""
