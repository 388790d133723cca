"""Fill the development database with a realistic set of items and orders.

    make seed                     # in the dev stack
    python scripts/seed.py 200    # anywhere the app's settings point at a database

Goes through the service layer, so every rule the API enforces applies; the rate
limit does not (it guards HTTP clients, not this script). Running it again adds
only what is missing: items are matched by name.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.core.config import load_settings  # after the path is set
from app.core.db import create_engine, create_session_factory
from app.items import service as items
from app.items.exceptions import ItemNameTaken
from app.items.schemas import ItemCreate
from app.orders import service as orders
from app.orders.schemas import OrderCreate

ADJECTIVES = ["Blue", "Compact", "Deluxe", "Eco", "Heavy-duty", "Mini", "Smart", "Vintage"]
# Seeded orders belong to `make token`'s default subject, so its tokens see them.
OWNER = "dev-user"
NOUNS = ["Anvil", "Bicycle", "Kettle", "Lamp", "Notebook", "Rucksack", "Teapot", "Umbrella"]


async def seed(count: int) -> tuple[int, int]:
    settings = load_settings()
    engine = create_engine(settings)
    rng = random.Random(42)  # the same data on every machine  # noqa: S311  # not security
    created_items = created_orders = 0
    try:
        async with create_session_factory(engine)() as session, session.begin():
            for n in range(count):
                name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {n + 1}"
                data = ItemCreate(name=name, description=f"Seeded item number {n + 1}.")
                try:
                    async with session.begin_nested():
                        item = await items.create_item(session, data)
                except ItemNameTaken:
                    continue  # seeded by an earlier run
                created_items += 1
                for _ in range(rng.randint(0, 3)):
                    order = OrderCreate(item_id=item.id, quantity=rng.randint(1, 20))
                    await orders.create_order(session, order, owner=OWNER)
                    created_orders += 1
    finally:
        await engine.dispose()
    return created_items, created_orders


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    new_items, new_orders = asyncio.run(seed(count))
    print(f"seeded {new_items} items and {new_orders} orders")
