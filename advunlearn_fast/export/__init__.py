"""`advunlearn export`: an erased text encoder written into the files other tools load: a
diffusers pipeline folder, a single-file SD v1.x checkpoint in the CompVis layout, or the
AdvUnlearn authors' .pt layout."""
