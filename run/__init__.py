"""How a run is planned, made and driven: the parsed options resolved into records (plan),
the objects assembled from them (assemble), the memory layout chosen for the model
(layouts), and the epoch loop (epochs)."""
