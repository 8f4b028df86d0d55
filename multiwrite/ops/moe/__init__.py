"""ops/moe"""
