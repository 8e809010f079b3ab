"""Rollout generation: models, problem sources, graders, backends and the resumable driver.

Nothing here is imported by the core; each backend imports its engine only when chosen.
``commands`` holds the generation subcommands of ``clear-learn`` (light to import).
"""
