"""Everyday English words given their own token in the world's vocabulary.

The world model only ever sees its caption words in training, but users type
free text (concepts such as "nudity" or "van gogh", prompts from other tools):
whole-word tokens keep those prompts short and readable in token dumps. Words
not listed still tokenize, character by character.
"""

EVERYDAY_WORDS = """
a an the of in on at to from with without for by and or not no is are was be been
this that these those it its there here one two three four five many some all any
very more most less few small large big tiny huge little long short tall wide thin
thick round flat sharp soft hard bright dark light pale deep vivid colour color
colors colours shape shapes pattern patterns texture style painting drawing sketch
photo photograph picture image render art artwork illustration portrait landscape
background foreground center centre middle left right top bottom corner edge side
black white gray grey orange pink brown gold silver cyan magenta violet
man woman person people child boy girl face hand eye hair body head nude nudity naked
dog cat bird fish horse cow sheep animal tree flower grass leaf forest garden park
house home building church tower bridge road street city town village castle
car truck bus train plane boat ship bike garbage parachute ball tench gas pump chainsaw
golf english springer cassette player
sky sun moon star cloud rain snow water sea ocean river lake beach mountain hill field
day night morning evening winter summer spring autumn
van gogh monet picasso rembrandt dali warhol kahlo cezanne vermeer klimt munch
starry impressionist abstract cartoon anime realistic oil watercolor watercolour
pencil ink digital vintage modern old new beautiful ugly happy sad scary cute
food apple banana bread cake pizza coffee tea cup glass bottle plate table chair bed
door window wall floor room kitchen book paper pen phone computer screen clock lamp
shirt dress hat shoe bag box toy game music guitar piano
red yellow green blue purple circle square triangle cross solid striped dotted
stripes stripe dots dot spotted plain round disk ring star heart line lines
object thing item scene view close up high quality detailed simple
showing shows show depicting of made looking standing sitting running walking
""".split()
