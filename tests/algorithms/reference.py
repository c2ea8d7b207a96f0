"""Plain-loop reference implementations, written straight from the equations, to check the vectorised ones."""

import math


def advantages_loop(rewards, group_size, estimator, eps=1e-4):
    out = []
    n_groups = len(rewards) // group_size
    all_mean = sum(rewards) / len(rewards)
    batch_std = math.sqrt(sum((r - all_mean) ** 2 for r in rewards) / (len(rewards) - 1)) if len(rewards) > 1 else 0
    for g in range(n_groups):
        group = rewards[g * group_size : (g + 1) * group_size]
        mean = sum(group) / group_size
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / (group_size - 1)) if group_size > 1 else 0.0
        for i, r in enumerate(group):
            if estimator == "group":
                out.append((r - mean) / (std + eps))
            elif estimator == "none":
                out.append(r - mean)
            elif estimator == "batch":
                out.append((r - mean) / (batch_std + eps))
            elif estimator == "rloo":
                others = [x for j, x in enumerate(group) if j != i]
                out.append(r - sum(others) / len(others) if others else 0.0)
    return out


def loss_loop(logprobs, old, adv, mask, loss_type, eps_low, eps_high, beta, ref, max_len):
    """Lists of lists in, a float out."""
    per_seq_terms = []  # list of (list of per-token losses) for masked tokens
    for i in range(len(logprobs)):
        idx = [t for t in range(len(logprobs[i])) if mask[i][t] > 0]
        if loss_type == "gspo":
            seq_lr = sum(logprobs[i][t] - old[i][t] for t in idx) / max(len(idx), 1)
        terms = []
        for t in idx:
            lr = seq_lr if loss_type == "gspo" else logprobs[i][t] - old[i][t]
            ratio = math.exp(lr)
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            term = -min(ratio * adv[i], clipped * adv[i])
            if beta > 0:
                d = ref[i][t] - logprobs[i][t]
                term += beta * (math.exp(d) - d - 1)
            terms.append(term)
        per_seq_terms.append(terms)
    if loss_type in ("grpo", "gspo"):
        return sum(sum(t) / max(len(t), 1) for t in per_seq_terms) / len(per_seq_terms)
    total = sum(sum(t) for t in per_seq_terms)
    if loss_type == "dapo":
        return total / max(sum(len(t) for t in per_seq_terms), 1)
    if loss_type == "dr_grpo":
        return total / (len(per_seq_terms) * max_len)
    raise ValueError(loss_type)


def gae_loop(rewards, values, mask, gamma, lam):
    """Lists of lists in; (advantages, returns) as lists of lists, written straight from the recursion."""
    advantages, returns = [], []
    for r_row, v_row, m_row in zip(rewards, values, mask):
        length = int(sum(m_row))
        adv = [0.0] * len(r_row)
        running = 0.0
        for t in reversed(range(length)):
            next_value = v_row[t + 1] if t + 1 < length else 0.0
            delta = r_row[t] + gamma * next_value - v_row[t]
            running = delta + gamma * lam * running
            adv[t] = running
        advantages.append(adv)
        returns.append([adv[t] + v_row[t] if t < length else 0.0 for t in range(len(r_row))])
    return advantages, returns
