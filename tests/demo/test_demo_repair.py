"""repair(): the nearest well-posed question for the base model's unreadable slips, and the
slips the instruct stage trains on, which repair undoes."""

import random
import sys
from pathlib import Path

import pytest

from bare_engine.demo.noise import SLIPS, slip
from bare_engine.demo.repair import repair
from bare_engine.demo.world import check, generate_problem, read_problem, worked_answer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

from demo_data import TEMPLATES, own_output_pair, slip_pair  # noqa: E402

# Unreadable questions the shipped base model wrote (bare-engine run --mode base --seed 3),
# and what repair makes of them.
BASE_SLIPS = [
    ("At the library, Keiko starts with 15 kilograms of beans. She gives away half of her kilograms of beans. "
     "How many kilograms of beans does Keiko have now?",
     "At the library, Keiko starts with 16 kilograms of beans. She gives away half of her kilograms of beans. "
     "How many kilograms of beans does Keiko have now?"),
    ("At school, there are 5 cupcakes in Ravi's basket. He gives away half of his cupcakes. He ends up with 2 "
     "times as many cupcakes as before. How many cupcakes does Owen have now?",
     "At school, there are 6 cupcakes in Ravi's basket. He gives away half of his cupcakes. He ends up with 2 "
     "times as many cupcakes as before. How many cupcakes does Ravi have now?"),
    ("Tara has 10 cows. He finds 5 more cows. He ends up with 3 times as many cows as before. "
     "How many cows does Tara end up with?",
     "Tara has 10 cows. She finds 5 more cows. She ends up with 3 times as many cows as before. "
     "How many cows does Tara end up with?"),
    ("At the farm, there are 16 blocks in Luis's fridge. He eats 2 bagels. He gives away 3 of them. "
     "The number of bagels doubles. How many bagels does Luis end up with?",
     "At the farm, there are 16 blocks in Luis's fridge. He eats 2 blocks. He gives away 3 of them. "
     "The number of blocks doubles. How many blocks does Luis end up with?"),
    ("Ben collected 6 dollars. He gives 7 dollars to Chloe. How many dollars are left?",
     "Ben collected 6 dollars. He gives 5 dollars to Chloe. How many dollars are left?"),
    ("There are 17 dollars in Kai's wallet. He saves 2 more dollars. He splits the dollars equally into 3 jars "
     "and keeps one envelope. How many dollars does Kai have now?",
     "There are 17 dollars in Kai's wallet. He saves 4 more dollars. He splits the dollars equally into 3 jars "
     "and keeps one envelope. How many dollars does Kai have now?"),
    ("Yuki buys 3 baskets of peaches with 5 in each bag. She gets 8 more peaches from Leah. "
     "She gives away half of her peaches. How many peaches does Priya have now?",
     "Yuki buys 3 baskets of peaches with 5 in each bag. She gets 9 more peaches from Leah. "
     "She gives away half of her peaches. How many peaches does Yuki have now?"),
]


@pytest.mark.parametrize("broken, fixed", BASE_SLIPS)
def test_repair_mends_the_base_models_slips(broken, fixed):
    assert read_problem(broken) is None
    assert repair(broken) == fixed
    assert check({"question": fixed, "answer": worked_answer(fixed)})


def test_repair_keeps_a_readable_question_and_gives_up_on_what_it_cannot_read():
    rng = random.Random(0)
    for _ in range(200):
        question = generate_problem(rng)["question"]
        assert repair(question) == question
    # no template for the step; too short; halving the result of a halving
    for question in ["Kai has 5 bags with 5 pears in each. He trades 4 pears with the question. How many pears does Kai have?",
                     "Mia has 3 apples. How many apples does Mia have now?",
                     "Lucas has 6 pears. He gives away half of his pears. He gives away half of his pears. "
                     "How many pears does Lucas have now?"]:
        assert repair(question) is None


@pytest.mark.parametrize("kind", sorted(SLIPS))
def test_slip_makes_the_question_unreadable_and_repair_undoes_it(kind):
    rng = random.Random(1)
    applied = exact = 0
    for _ in range(300):
        record = {k: v for k, v in generate_problem(rng).items() if k != "final"}
        slipped = slip(record, rng, kind)
        if slipped is None:
            continue
        applied += 1
        assert read_problem(slipped["question"]) is None
        fixed = repair(slipped["question"])
        if kind != "take_too_many":  # takes one less than there is, not the original amount
            assert fixed == record["question"]
        exact += fixed == record["question"]
    assert applied >= 15  # odd_start needs a division first: 1 problem in 12
    if kind == "take_too_many":
        assert exact < applied


def test_own_output_pair_repairs_an_unreadable_output():
    broken, fixed = BASE_SLIPS[0]
    user, reply = own_output_pair(random.Random(0), {"question": broken, "answer": "#### 7"})
    assert broken in user and TEMPLATES.parse(reply) == {"question": fixed, "answer": worked_answer(fixed)}


def test_slip_pair_replies_with_the_repaired_problem():
    rng = random.Random(2)
    for _ in range(100):
        user, reply = slip_pair(rng)
        candidate = TEMPLATES.parse(user.rsplit(TEMPLATES.start_marker, 1)[1])
        target = TEMPLATES.parse(reply)
        assert read_problem(candidate["question"]) is None and check(target)
        assert repair(candidate["question"]) == target["question"]
