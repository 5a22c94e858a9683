"""What replicas of one gateway share: Redis, rate-limit buckets, the key sealing `request_state`.

In single-process mode each has a memory (or process-local) form; the Redis forms let several replicas
behind one load balancer act as one gateway (issue 18).
"""
