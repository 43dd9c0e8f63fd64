"""What the tests share besides fixtures (fixtures live in the ``conftest.py`` files).

``wait`` the one bounded wait; ``processes`` the broker, fleet and agent launchers; ``toml`` the
agents' test configuration; ``updater`` the update tests' updater and ``fault_table`` their
faults; ``agent``, ``converter``, ``fleet`` each part's test helpers; ``bundle_files`` bundles
packed member by member; ``published_models`` and ``chain_models`` models shaped like published
ones and their bundles; ``serving_requests`` good and malformed requests to a serving agent.
"""
