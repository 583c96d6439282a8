from harness.kubelet.main import main

main()
