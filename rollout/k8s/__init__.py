"""Kubernetes plumbing shared by the Kubernetes platform, its status store and its routers.

Why a package beside ``platforms`` and ``routers``: both need the one API client
(:mod:`rollout.k8s.client`, the only module that imports ``kubernetes``) and the slot/role
spec (:mod:`rollout.k8s.spec`); living inside ``platforms`` made routers and platforms import
each other.
"""
