"""The live Textual view of a run; the only package of fedlaunch that imports Textual."""
