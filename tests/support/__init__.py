"""What the tests share besides fixtures (fixtures live in the ``conftest.py`` files).

``wait`` the one bounded wait; ``processes`` the broker, fleet and agent launchers; ``toml`` the
agents' test configuration; ``agent``, ``converter``, ``fleet`` each part's test helpers.
"""
