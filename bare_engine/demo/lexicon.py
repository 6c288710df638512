"""The toy world's grammar: word lists and sentence templates.

Slots inside templates: {N} protagonist name, {F} another name, {P}/{p} subject
pronoun (capitalised / lower), {O} object pronoun, {S} possessive pronoun,
{k}/{k2} numbers, {items} the plural item phrase, {groups}/{group} a container
noun, {box} a container, {gift} a thing to buy. The generator fills them; the
checker compiles the same templates into regular expressions to read a problem back.
"""

from __future__ import annotations

GIRLS = (
    "Mia Sara Emma Lily Ava Zoe Nora Ruby Maya Chloe Grace Hannah Ella Lucy Anna Julia "
    "Rosa Leah Amira Priya Yuki Fatima Ines Olga Nadia Keiko Lena Clara Alice Ivy Tara Jade"
).split()
BOYS = (
    "Tom Leo Sam Ben Max Omar Ravi Jack Noah Liam Ethan Lucas Adam Hugo Kai Diego Marco "
    "Felix Ivan Kenji Arjun Tariq Pablo Oscar Theo Milo Finn Owen Luis Amir Jonas Eli"
).split()
NAMES = GIRLS + BOYS

PRONOUNS = {"girl": dict(P="She", p="she", O="her", S="her"), "boy": dict(P="He", p="he", O="him", S="his")}

# category -> (item phrases, containers, group nouns (plural, singular))
CATEGORIES = {
    "fruit": (
        "apples oranges pears plums lemons peaches cherries strawberries mangoes bananas".split(),
        ["basket", "bag", "fridge", "bowl"],
        [("baskets", "basket"), ("bags", "bag"), ("bowls", "bowl")],
    ),
    "baked": (
        "cookies muffins cupcakes pies rolls pretzels bagels donuts".split(),
        ["box", "basket", "lunch box", "tin"],
        [("boxes", "box"), ("trays", "tray"), ("plates", "plate")],
    ),
    "things": (
        ["pencils", "stickers", "marbles", "crayons", "stamps", "shells", "beads", "cards",
         "books", "toy cars", "balloons", "buttons", "blocks", "comics", "postcards", "erasers"],
        ["box", "bag", "drawer", "backpack", "desk"],
        [("boxes", "box"), ("bags", "bag"), ("piles", "pile"), ("jars", "jar")],
    ),
    "animals": (
        "chickens ducks rabbits goats sheep cows hens geese".split(),
        ["barn", "yard", "field", "pen"],
        [("pens", "pen"), ("groups", "group"), ("fields", "field")],
    ),
    "liquid": (
        ["liters of juice", "liters of water", "cups of milk", "liters of lemonade", "cups of tea"],
        ["fridge", "kitchen", "tank", "jug"],
        [("jugs", "jug"), ("bottles", "bottle"), ("pitchers", "pitcher")],
    ),
    "cooking": (
        ["cups of flour", "kilograms of rice", "grams of sugar", "pounds of potatoes", "kilograms of beans"],
        ["kitchen", "pantry", "cupboard", "sack"],
        [("sacks", "sack"), ("jars", "jar"), ("bags", "bag")],
    ),
    "craft": (
        ["meters of ribbon", "meters of rope", "meters of yarn", "feet of string", "meters of fabric"],
        ["box", "drawer", "workshop", "bag"],
        [("rolls", "roll"), ("pieces", "piece"), ("bags", "bag")],
    ),
    "money": (
        ["dollars"],
        ["wallet", "piggy bank", "pocket", "jar"],
        [("envelopes", "envelope"), ("jars", "jar"), ("purses", "purse")],
    ),
}

# Item phrases that are amounts of a substance ("liters of juice"), not countable things.
MASS = ("liquid", "cooking", "craft", "money")

GIFTS = "book toy hat game ticket kite puzzle scarf lamp ball".split()

SETTINGS = [
    "At the farm", "At the bakery", "At the market", "At school", "At the park", "At the beach",
    "At the fair", "At the library", "At the camp", "At the zoo", "At home", "At the store",
    "On Monday", "On Saturday", "On Sunday", "During the summer", "During the holidays",
    "In the morning", "In the spring", "On a rainy day", "During the school fair",
]
CONNECTIVES = [
    "Then", "Later,", "After lunch,", "The next day,", "In the afternoon,", "After that,",
    "On Friday,", "In the evening,", "Soon after,", "Next,",
]

# Numbers are written with digits; the word forms below are part of the grammar.
START = [
    ("{N} has {k} {items}.", "k"),
    ("{N} starts with {k} {items}.", "k"),
    ("{N} collected {k} {items}.", "k"),
    ("There are {k} {items} in {N}'s {box}.", "k"),
    ("{N} has {k} {groups} with {k2} {items} in each.", "k*k2"),
    ("{N} buys {k} {groups} of {items} with {k2} in each {group}.", "k*k2"),
]

# (template, op, amount) where amount is "k" or a fixed number.
STEPS_ALL = [
    ("{P} gets {k} more {items} from {F}.", "+", "k"),
    ("{F} gives {O} {k} more {items}.", "+", "k"),
    ("{P} finds {k} more {items}.", "+", "k"),
    ("{P} gives {k} {items} to {F}.", "-", "k"),
    ("{F} borrows {k} {items} from {O}.", "-", "k"),
    ("{P} gives away {k} of them.", "-", "k"),
    ("The number of {items} doubles.", "*", 2),
    ("The number of {items} triples.", "*", 3),
    ("{P} ends up with {k} times as many {items} as before.", "*", "k"),
    ("{P} splits the {items} equally into {k} {groups} and keeps one {group}.", "/", "k"),
    ("{P} gives away half of {S} {items}.", "/", 2),
]
STEPS_BY_CATEGORY = {
    "fruit": [
        ("{P} picks {k} more {items} from the tree.", "+", "k"),
        ("{P} eats {k} of the {items}.", "-", "k"),
        ("{P} makes juice with {k} {items}.", "-", "k"),
        ("{P} buys {k} more {items}.", "+", "k"),
    ],
    "baked": [
        ("{P} bakes {k} more {items}.", "+", "k"),
        ("{P} eats {k} {items}.", "-", "k"),
        ("{P} packs {k} {items} for a picnic.", "-", "k"),
        ("{P} sells {k} {items}.", "-", "k"),
    ],
    "things": [
        ("{P} wins {k} more {items} in a game.", "+", "k"),
        ("{P} buys {k} more {items}.", "+", "k"),
        ("{P} trades {k} {items} with {F}.", "-", "k"),
        ("{P} loses {k} {items}.", "-", "k"),
    ],
    "animals": [
        ("{k} more {items} are born.", "+", "k"),
        ("{P} buys {k} more {items}.", "+", "k"),
        ("{k} {items} run away.", "-", "k"),
        ("{P} sells {k} {items} at the market.", "-", "k"),
    ],
    "liquid": [
        ("{P} pours in {k} more {items}.", "+", "k"),
        ("{P} drinks {k} {items}.", "-", "k"),
        ("{P} spills {k} {items}.", "-", "k"),
    ],
    "cooking": [
        ("{P} buys {k} more {items}.", "+", "k"),
        ("{P} uses {k} {items} for a recipe.", "-", "k"),
    ],
    "craft": [
        ("{P} buys {k} more {items}.", "+", "k"),
        ("{P} cuts off {k} {items} for a project.", "-", "k"),
    ],
    "money": [
        ("{P} earns {k} more {items} by washing cars.", "+", "k"),
        ("{P} saves {k} more {items}.", "+", "k"),
        ("{P} spends {k} {items} on a {gift}.", "-", "k"),
    ],
}

NEUTRAL = [
    "{P} is very happy.",
    "It is a sunny day.",
    "{P} counts them carefully.",
    "{F} watches {O}.",
    "{P} keeps the {items} in a safe place.",
]

QUESTIONS = [
    "How many {items} does {N} have now?",
    "How many {items} does {p} have at the end?",
    "How many {items} does {N} end up with?",
    "How many {items} are left?",
    "How many {items} does {N} have in the end?",
]

ANSWER_START = {"k": "{N} starts with {k} {items}.", "k*k2": "{N} has {k} * {k2} = {v} {items}."}
# Each step restates its sentence from the question ("Then " + the sentence, so that its
# words are the same tokens as in the question), then does the arithmetic.
ANSWER_STEP = "{step}, so {p} has {a} {op} {b} = {v}."
