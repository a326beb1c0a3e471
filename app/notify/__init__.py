"""Sending the notifications of topic-based Subscriptions (Subscriptions R5 Backport IG v1.1.0)."""
