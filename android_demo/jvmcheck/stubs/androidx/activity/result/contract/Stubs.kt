package androidx.activity.result.contract

import android.net.Uri

abstract class ActivityResultContract<I, O>
class ActivityResultContracts {
    open class TakePicture : ActivityResultContract<Uri, Boolean>()
    open class GetContent : ActivityResultContract<String, Uri?>()
}
