"""A support-ticket routing task the project generates and labels itself.

Each ticket is routed to one of five teams. Labels follow a written rule, so
the oracle is exact, but the task is not trivially separable:

- class sizes differ (billing is common, security is rare), and inside a class
  some phrasings are common and some rare;
- a third of the tickets mix two topics: a *context* sentence from one team's
  world followed by a *request* for another; the rule routes by the request,
  so the wording of the wrong team is present in the text;
- a few tickets are vague ("something is off with my order") and their label
  is drawn at random between two plausible teams: real, irreducible noise.

Openers and closers with order numbers make nearly every ticket's text
distinct, so drawing distinct tickets keeps the intended mix (a first version
without them could draw only ~29 distinct vague tickets, which all landed in
the pool). ``make_task`` is deterministic for a seed.
"""
from __future__ import annotations

import random

LABELS = ["billing", "delivery", "technical", "account", "security"]
PRIOR = [0.34, 0.26, 0.2, 0.13, 0.07]

SLOTS = {
    "amount": ["$12.99", "$49", "$120", "€30", "$7.50", "£65", "$230"],
    "item": ["headphones", "the blender", "a winter jacket", "two phone cases", "the desk lamp", "running shoes",
             "a coffee grinder", "the printer ink"],
    "device": ["iPhone", "Android phone", "Windows laptop", "iPad", "Chromebook", "smart TV"],
    "days": ["two days", "a week", "ten days", "three weeks", "since Monday"],
    "city": ["Lyon", "Denver", "Osaka", "Leeds", "Porto", "Austin"],
}

# label -> (weight, request sentence); rarer phrasings get small weights.
REQUESTS = {
    "billing": [(5, "Why was I charged {amount} twice this month?"), (4, "Can you explain the {amount} fee on my invoice?"),
                (3, "Please send me a receipt for the {amount} payment."), (2, "My card was declined when paying {amount}, what should I do?"),
                (1, "How do I switch my plan from monthly to yearly billing?"), (1, "Is VAT included in the {amount} you charged?")],
    "delivery": [(5, "Where is my package with {item}? It has been {days}."), (4, "The tracking for {item} has not updated in {days}."),
                 (2, "Can you deliver {item} to my office in {city} instead?"), (2, "The courier left {item} at the wrong address."),
                 (1, "My parcel to {city} is stuck in customs, can you help?")],
    "technical": [(5, "The app crashes on my {device} when I open the cart."), (3, "I get an error 500 when I check out on my {device}."),
                  (2, "The website will not load product images on my {device}."), (1, "Push notifications stopped working on my {device}."),
                  (1, "The barcode scanner in the app does not focus on my {device}.")],
    "account": [(4, "How do I change the email address on my account?"), (3, "Please delete my account and all my data."),
                (2, "I want to merge my two accounts into one."), (1, "Can I add my partner as a second user on my account?")],
    "security": [(3, "Someone logged into my account from {city} and it was not me."), (2, "I got a strange email asking for my password, is it from you?"),
                 (1, "My saved card was used for an order of {item} that I never placed."), (1, "I think my account was hacked, the password no longer works.")],
}

# Background sentences from each team's world, used as context in mixed tickets.
CONTEXT = {
    "billing": ["I paid {amount} for my last order.", "My invoice this month looks higher than usual.", "I just renewed my subscription."],
    "delivery": ["My order of {item} arrived yesterday.", "The courier came to {city} this morning.", "I am waiting for {item} to ship."],
    "technical": ["I use your app on my {device}.", "The app updated overnight on my {device}.", "I was browsing the website on my {device}."],
    "account": ["I changed my email address last week.", "I have had an account with you for years.", "My partner also shops with my account."],
    "security": ["I got a login alert from {city}.", "I reset my password yesterday.", "I received a suspicious text message."],
}

VAGUE = [("Something is off with my order of {item}, can you look into it?", ("delivery", "billing")),
         ("I am not happy with what happened with {amount}, please fix it.", ("billing", "security")),
         ("It does not work anymore on my {device} and I cannot get in.", ("technical", "account")),
         ("My account shows an order of {item} I do not recognise.", ("security", "billing"))]

OPENERS = ["", "", "Hi, ", "Hello team, ", "Order {order}: ", "Quick question. "]
CLOSERS = ["", "", " Thanks.", " Thank you!", " Order number {order}.", " Please reply soon."]

MIXED_RATE = 0.33
VAGUE_RATE = 0.07


def _fill(template: str, rng: random.Random) -> str:
    return template.format(order=rng.randint(10000, 99999), **{k: rng.choice(v) for k, v in SLOTS.items()})


def _request(label: str, rng: random.Random) -> str:
    weights, templates = zip(*REQUESTS[label])
    return _fill(rng.choices(templates, weights=weights)[0], rng)


def ticket(rng: random.Random) -> tuple[str, str]:
    """One (text, label) pair following the routing rule, with an opener and closer that carry no signal."""
    text, label = _body(rng)
    return _fill(rng.choice(OPENERS), rng) + text + _fill(rng.choice(CLOSERS), rng), label


def _body(rng: random.Random) -> tuple[str, str]:
    u = rng.random()
    if u < VAGUE_RATE:
        template, pair = rng.choice(VAGUE)
        return _fill(template, rng), rng.choice(pair)
    label = rng.choices(LABELS, weights=PRIOR)[0]
    if u < VAGUE_RATE + MIXED_RATE:
        other = rng.choice([lab for lab in LABELS if lab != label])
        return f"{_fill(rng.choice(CONTEXT[other]), rng)} {_request(label, rng)}", label
    return _request(label, rng), label


def make_task(n_pool: int, n_eval: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Pool and held-out rows ``{"id", "prompt", "label"}``; no text appears in both."""
    rng = random.Random(seed)
    rows, seen = [], set()
    attempts = 0
    while len(rows) < n_pool + n_eval:
        attempts += 1
        if attempts > 50 * (n_pool + n_eval):
            raise ValueError(f"cannot draw {n_pool + n_eval} distinct tickets")
        text, label = ticket(rng)
        if text in seen:
            continue
        seen.add(text)
        rows.append({"id": f"t{len(rows):05d}", "prompt": text, "label": label})
    rng.shuffle(rows)  # pool and held-out set come from the same distribution
    return rows[:n_pool], rows[n_pool:]
