"""The study files shipped with `search`, installed as the package `search_studies`."""
